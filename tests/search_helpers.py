"""Searches over the count workload: the shipped rus-pol configs with ``training.workload=count``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [str(REPO / "config" / "finetune-rus-pol.json"), str(REPO / "config" / "finetune-rus-pol-topic.json")]
COUNT = ["training.workload=count", "slurm.cpus_per_task=1", "slurm.mem=200M", "slurm.time=00:10:00",
         "slurm.signal_grace_s=5"]


def count_sets(count_to: int = 6, interval: int = 2, sleep_s: float = 0.02) -> list[str]:
    return [*COUNT, f"training.count_to={count_to}", f"training.count_eval_interval={interval}",
            f"training.count_sleep_s={sleep_s}"]


def search_plan(tmp_path: Path, grid: dict[str, Any], sets: list[str] | None = None, model_types=("normal",)):
    from finetune.login.plan import build_plan

    path = tmp_path / "search-grid.json"
    path.write_text(json.dumps(grid))
    return build_plan(CONFIGS, sets if sets is not None else count_sets(), grid_config=str(path),
                      model_types=model_types)


def study_trials(plan_dir: Path):
    from finetune.login.search import load_spec, open_study

    return open_study(plan_dir, load_spec(plan_dir)).get_trials(deepcopy=False)


def runs(plan_dir: Path, trial_id: str) -> list[dict[str, Any]]:
    """The count workload's runs of a trial (one per process that worked on it)."""
    return json.loads((plan_dir / "trials" / trial_id / "checkpoints" / "count.json").read_text())["runs"]
