"""Full grid against TPE + successive halving on the demo task, with the same number of workers.

The demo task: the normal-text model of the README's demo (pretrained here when absent), trained
on Russian + Polish SIB-200, evaluated on both. The grid has 24 points (6 learning rates x 2
batch sizes x 2 warmup ratios). The full grid runs every point through `finetune submit` on the
local executor, N trials at a time; the search runs the same points as categorical parameters
through `finetune search` with N local workers, a budget of --trials trials, the TPE sampler and
the successive-halving pruner.

Reported for each: the best eval macro-F1 (averaged over the eval languages, of the best
checkpoint of a finished trial), the training steps spent (every trial's last step, pruned
trials included) and the wall time. Goal of issue 16: within 1 point of the grid's best at 40%
or less of its compute.

    .venv/bin/python bench/search.py                          # demo size, 2 workers, budget 10
    .venv/bin/python bench/search.py --size tiny --out /tmp/bench-search   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PARAMETERS = {"learning_rate": [2e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3], "batch_size": [16, 32],
              "warmup_ratio": [0.0, 0.1]}


def _log(message: str) -> None:
    print(f"[bench/search] {message}", file=sys.stderr, flush=True)


def inputs(size_name: str, out: Path) -> tuple[list[str], list[str]]:
    from finetune.demo import CONFIG_FILES, SIZES, SLURM_OVERRIDES

    size = SIZES[size_name]
    overrides = [*SLURM_OVERRIDES, *size.overrides, f"checkpoints.prefix={out / 'models'}",
                 f"tokenizers.prefix={out / 'models'}", "training.eval_interval=25"]
    if size_name == "tiny":
        overrides = [o for o in overrides if not o.startswith(("hyperparameters.batch_size", "training.eval_interval"))]
        overrides += ["training.eval_interval=1", "hyperparameters.max_steps=6"]
    else:
        overrides += ["hyperparameters.epochs=4"]
    return [str(REPO / f) for f in CONFIG_FILES], overrides


def steps_of(trial_dir: Path) -> int:
    """The last step a trial trained to (pruned trials stop early)."""
    from finetune import layout
    from finetune.analysis.plots import read_metrics

    records = read_metrics(layout.metrics_file(trial_dir))
    return int(max((r["step"] for r in records), default=0))


def score(result: dict) -> float | None:
    from finetune.login.search import objective

    return objective(result, "macro_f1") if isinstance(result, dict) and result.get("state") == "finished" else None


def measure(plan_dir: Path, started: float) -> dict:
    from finetune import layout

    trials = [p for p in layout.trials_dir(plan_dir).iterdir() if p.is_dir()]
    results = [layout.read_result(p) for p in trials]
    scores = [s for s in (score(r) for r in results) if s is not None]
    return {"trials": len(trials), "finished": len(scores),
            "pruned": sum(1 for r in results if layout.says_pruned(r)),
            "best_eval_macro_f1": max(scores) if scores else None,
            "steps": sum(steps_of(p) for p in trials), "wall_s": round(time.monotonic() - started, 1)}


def run_grid(files: list[str], overrides: list[str], out: Path, workers: int) -> dict:
    from finetune.login.plan import build_plan, write_plan
    from finetune.login.submit import submit

    grid = out / "grid.json"
    grid.write_text(json.dumps({"parameters": PARAMETERS}))
    plan = build_plan(files, overrides, grid_config=str(grid), model_types=("normal",))
    write_plan(plan, out / "grid")
    _log(f"full grid: {len(plan.trials)} trials, {workers} at a time")
    started = time.monotonic()
    submit(out / "grid", executor="local", parallel=workers)
    return measure(out / "grid", started)


def run_search(files: list[str], overrides: list[str], out: Path, workers: int, trials: int, seed: int) -> dict:
    from finetune.login.plan import build_plan
    from finetune.login.search_submit import start_search

    grid = out / "search.json"
    grid.write_text(json.dumps({"parameters": PARAMETERS,
                                "search": {"sampler": "tpe", "pruner": "successive-halving", "trials": trials,
                                           "workers": workers, "seed": seed, "startup_trials": 4}}))
    plan = build_plan(files, overrides, grid_config=str(grid), model_types=("normal",))
    _log(f"search: TPE + successive halving, budget {trials}, {workers} workers")
    started = time.monotonic()
    start_search(plan, out / "search", executor="local")
    return measure(out / "search", started)


def ensure_models(files: list[str], overrides: list[str], size_name: str, out: Path) -> None:
    from finetune.demo import SIZES, ensure_models, model_targets
    from finetune.login.plan import build_plan

    grid = out / "one.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": 1e-3}}))
    plan = build_plan(files, overrides, grid_config=str(grid), model_types=("normal",))
    ensure_models(model_targets(plan), SIZES[size_name], log=_log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("demo", "tiny"), default="demo")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trials", type=int, default=10, help="the search's budget (default 10 of 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-search")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    files, overrides = inputs(args.size, out)
    ensure_models(files, overrides, args.size, out)
    grid = run_grid(files, overrides, out, args.workers)
    search = run_search(files, overrides, out, args.workers, args.trials, args.seed)
    report = {"size": args.size, "workers": args.workers, "grid_points": 24, "grid": grid, "search": search}
    if grid["best_eval_macro_f1"] is not None and search["best_eval_macro_f1"] is not None:
        report["gap_points"] = round(100 * (grid["best_eval_macro_f1"] - search["best_eval_macro_f1"]), 2)
        report["compute_fraction_steps"] = round(search["steps"] / max(1, grid["steps"]), 3)
        report["compute_fraction_wall"] = round(search["wall_s"] / max(1e-9, grid["wall_s"]), 3)
    (out / "bench-search.json").write_text(json.dumps(report, indent=1))
    print("| run | trials | finished | pruned | best eval macro-F1 | train steps | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("full grid", grid), ("TPE + successive halving", search)):
        best = "n/a" if r["best_eval_macro_f1"] is None else f"{r['best_eval_macro_f1']:.4f}"
        print(f"| {name} | {r['trials']} | {r['finished']} | {r['pruned']} | {best} | {r['steps']} | {r['wall_s']} |")
    if "gap_points" in report:
        print(f"\nsearch vs grid: {report['gap_points']:+.2f} points below the grid's best, "
              f"{100 * report['compute_fraction_steps']:.0f}% of its steps, "
              f"{100 * report['compute_fraction_wall']:.0f}% of its wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
