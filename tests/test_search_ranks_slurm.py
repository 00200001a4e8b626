"""Searches whose trials span several tasks, on the real test clusters: the search worker (one
array task) starts each trial as the array template would (an srun step over the job's tasks,
here 2 ranks on one node, or one rank on each of the 2-node cluster's nodes), rank 0 alone
reports each evaluation to the study and asks the pruner, and every rank stops where it says.

The study holds a rival that finished with macro-F1 1.0 at the first rung (step 4), so the
successive-halving pruner stops every trial at its first evaluation: two trials, one after the
other in the same job (two srun steps at the same rendezvous), both pruned at step 4.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401

from finetune.login import search as S
from finetune.login.plan import build_plan
from finetune.login.search_submit import prepare, start_search

sys.path.insert(0, str(Path(__file__).parent))
from search_helpers import study_trials  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG_FILES = ("config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json", "config/data-local.json")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _search(tmp_path: Path, models: Path, *, nodes: int, per_node: int) -> tuple[Path, str]:
    overrides = ["slurm.cpus_per_task=1", f"slurm.mem={900 * per_node}M", "slurm.time=00:20:00",
                 "slurm.signal_grace_s=30", f"slurm.nodes={nodes}", f"slurm.ntasks_per_node={per_node}",
                 "slurm.launcher=srun", f"checkpoints.prefix={models}", "checkpoints.normal=tiny",
                 f"tokenizers.prefix={models}", "tokenizers.normal_prefix=tiny", f"data.cache_dir={tmp_path / 'cache'}",
                 "hyperparameters.max_steps=12", "hyperparameters.batch_size=16", "hyperparameters.micro_batch_size=8",
                 "hyperparameters.dropout=0.0", "training.strategy=ddp", "training.eval_interval=4",
                 "training.checkpoint_interval=100", "training.max_eval_samples=32", "training.device=cpu",
                 "training.log_interval=1"]
    grid = tmp_path / "search-grid.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                                "search": {"sampler": "random", "trials": 3, "workers": 1, "seed": 0,
                                           "pruner": "successive-halving"}}))
    plan = build_plan([str(REPO / f) for f in CONFIG_FILES], overrides, grid_config=str(grid), model_types=("normal",))
    out = tmp_path / "search"
    spec = prepare(plan, out)
    import optuna
    from optuna.trial import TrialState

    study = S.open_study(out, spec)
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0, intermediate_values={4: 1.0},
                                              system_attrs={"completed_rung_0": 1.0}))
    report = start_search(plan, out, executor="slurm")
    assert report.workers == ["0001-0"] and report.budget == 3 and report.done_before == 1
    log = S.worker_path(out, "0001-0").with_suffix(".log")
    end = time.monotonic() + 600
    while not (log.is_file() and "exited with" in log.read_text(errors="replace")):
        assert time.monotonic() < end, log.read_text(errors="replace")[-4000:] if log.is_file() else "no worker log"
        time.sleep(0.5)
    return out, report.job_id


def _check(out: Path, job: str, world: int) -> list[str]:
    worker_log = S.worker_path(out, "0001-0").with_suffix(".log").read_text(errors="replace")
    assert "worker 0001-0 exited with 0" in worker_log, worker_log[-4000:]
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"], worker_log[-4000:]
    lines = (S.search_dir(out) / S.JOURNAL_FILE).read_text().splitlines()
    reports = [e for e in map(json.loads, lines) if e.get("op_code") == 7]  # SET_TRIAL_INTERMEDIATE_VALUE
    logs = []
    for t in trials[1:]:
        assert list(t.intermediate_values) == [4]
        assert len([e for e in reports if e["trial_id"] == t._trial_id]) == 1  # by rank 0 alone
        tdir = out / "trials" / t.user_attrs["trial_id"]
        result = json.loads((tdir / "result.json").read_text())
        assert (result["state"], result["pruned_step"]) == ("pruned", 4)
        log = (tdir / "log.txt").read_text(errors="replace")
        assert "exec srun --wait=" in log and f"ddp on {world} x cpu" in log, log[-4000:]
        assert "pruned at step 4" in log and "step 5/12" not in log, log[-4000:]
        logs.append(log)
    # each trial was one srun step of the worker's job with every rank
    sacct = subprocess.run(["sacct", "-j", f"{job}_0", "-n", "-P", "-o", "JobID,NTasks,NodeList,ExitCode"],
                           capture_output=True, text=True, check=True).stdout
    steps = [line.split("|") for line in sacct.splitlines() if re.match(rf"{job}_0\.\d+\|", line)]
    assert [(s[1], s[3]) for s in steps] == [(str(world), "0:0")] * 2, sacct
    return [s[2] for s in steps]


def test_a_search_of_two_rank_trials_prunes_both_ranks_together(slurm_cluster, tiny_pretrained, tmp_path):  # noqa: F811
    _, prefix = tiny_pretrained
    out, job = _search(tmp_path, prefix.parent, nodes=1, per_node=2)
    _check(out, job, 2)


def test_a_search_of_two_node_trials_prunes_both_nodes_together(slurm_multinode, tiny_pretrained, tmp_path):  # noqa: F811
    _, prefix = tiny_pretrained
    out, job = _search(tmp_path, prefix.parent, nodes=2, per_node=1)
    assert _check(out, job, 2) == ["ftnode[1-2]"] * 2
