"""Full grid against TPE + successive halving on the demo task, with the same number of workers.

The demo task: Russian + Polish SIB-200 topic classification, trained on both and evaluated on
both, with a nanoGPT model pretrained here on the same sentences when absent. The grid has 24
points (6 learning rates x 2 batch sizes x 2 warmup ratios). The full grid runs every point
through `finetune submit` on the local executor, N trials at a time; the search runs the same
points as categorical parameters through `finetune search` with N local workers, a budget of
--trials trials, the TPE sampler and the successive-halving pruner (first rung: the first
evaluation).

Sizes: "small" (what fits about 10 minutes on 2 cores: a 2-layer, 64-wide model pretrained for
300 steps, trials of 100 steps with an evaluation every 20), "demo" (the README demo's 4x128
model, trials of 4 epochs with an evaluation every 25 steps: a bigger machine), "tiny" (a smoke
run of the script itself).

Reported for each: the best eval macro-F1 (averaged over the eval languages, of the best
checkpoint of a finished trial), the compute spent (training steps and rows of every trial,
pruned trials included; CPU seconds of the trial processes; wall time). Goal of issue 16: within
1 point of the grid's best at 40% or less of its compute.

    .venv/bin/python bench/search.py                                      # small, 2 workers, budget 8
    .venv/bin/python bench/search.py --size tiny --out /tmp/bench-search   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PARAMETERS = {"learning_rate": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2], "batch_size": [8, 16],
              "warmup_ratio": [0.0, 0.1]}
GRID_POINTS = 6 * 2 * 2
# The "small" size: a 2x64 model (pretraining in about a minute on 2 cores), trials of 100 steps.
SMALL_PRETRAIN = {"vocab_size": 1000, "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "steps": 300,
                  "batch_size": 16, "learning_rate": 3e-3, "seed": 0}


def _log(message: str) -> None:
    print(f"[bench/search] {message}", file=sys.stderr, flush=True)


def size_of(name: str):
    from dataclasses import replace

    from finetune.demo import SIZES

    return replace(SIZES["demo"], name="small", pretrain=SMALL_PRETRAIN) if name == "small" else SIZES[name]


def inputs(size_name: str, out: Path) -> tuple[list[str], list[str]]:
    from finetune.demo import CONFIG_FILES, SLURM_OVERRIDES

    size = size_of(size_name)
    overrides = [*SLURM_OVERRIDES, *size.overrides, f"checkpoints.prefix={out / 'models'}",
                 f"tokenizers.prefix={out / 'models'}"]
    if size_name == "tiny":
        overrides = [o for o in overrides if not o.startswith(("hyperparameters.batch_size", "training.eval_interval",
                                                               "hyperparameters.max_steps"))]
        overrides += ["training.eval_interval=1", "hyperparameters.max_steps=6"]
    elif size_name == "small":
        overrides += ["hyperparameters.max_steps=100", "training.eval_interval=20", "training.checkpoint_interval=1000"]
    else:
        overrides += ["hyperparameters.epochs=4", "training.eval_interval=25"]
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


def children_cpu_s() -> float:
    """CPU seconds of every finished child process and its descendants (the trials)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(plan_dir: Path, started: float, cpu_before: float) -> dict:
    from finetune import layout

    trials = [p for p in layout.trials_dir(plan_dir).iterdir() if p.is_dir()]
    results = [layout.read_result(p) for p in trials]
    scores = [s for s in (score(r) for r in results) if s is not None]
    steps = {p: steps_of(p) for p in trials}
    batch = {p: int(r["hyperparameters"]["batch_size"]) for p, r in zip(trials, results, strict=True)
             if isinstance(r, dict) and r.get("hyperparameters")}
    return {"trials": len(trials), "finished": len(scores),
            "pruned": sum(1 for r in results if layout.says_pruned(r)),
            "best_eval_macro_f1": max(scores) if scores else None,
            "steps": sum(steps.values()), "rows": sum(steps[p] * batch.get(p, 0) for p in trials),
            "cpu_s": round(children_cpu_s() - cpu_before, 1), "wall_s": round(time.monotonic() - started, 1)}


def run_grid(files: list[str], overrides: list[str], out: Path, workers: int) -> dict:
    from finetune.login.plan import build_plan, write_plan
    from finetune.login.submit import submit

    shutil.rmtree(out / "grid", ignore_errors=True)  # a fresh run (the models are kept)
    grid = out / "grid.json"
    grid.write_text(json.dumps({"parameters": PARAMETERS}))
    plan = build_plan(files, overrides, grid_config=str(grid), model_types=("normal",))
    write_plan(plan, out / "grid")
    _log(f"full grid: {len(plan.trials)} trials, {workers} at a time")
    started, cpu = time.monotonic(), children_cpu_s()
    submit(out / "grid", executor="local", parallel=workers)
    return measure(out / "grid", started, cpu)


def run_search(files: list[str], overrides: list[str], out: Path, workers: int, trials: int, seed: int) -> dict:
    from finetune.login.plan import build_plan
    from finetune.login.search_submit import start_search

    shutil.rmtree(out / "search", ignore_errors=True)
    grid = out / "search.json"
    grid.write_text(json.dumps({"parameters": PARAMETERS,
                                "search": {"sampler": "tpe", "pruner": "successive-halving", "trials": trials,
                                           "workers": workers, "seed": seed, "startup_trials": 4}}))
    plan = build_plan(files, overrides, grid_config=str(grid), model_types=("normal",))
    _log(f"search: TPE + successive halving, budget {trials}, {workers} workers")
    started, cpu = time.monotonic(), children_cpu_s()
    start_search(plan, out / "search", executor="local")
    return measure(out / "search", started, cpu)


def ensure_models(files: list[str], overrides: list[str], size_name: str, out: Path) -> None:
    from finetune.demo import ensure_models, model_targets
    from finetune.login.plan import build_plan

    grid = out / "one.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": 1e-3}}))
    plan = build_plan(files, overrides, grid_config=str(grid), model_types=("normal",))
    ensure_models(model_targets(plan), size_of(size_name), log=_log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("small", "demo", "tiny"), default="small")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trials", type=int, default=8, help="the search's budget (default 8 of the 24 points)")
    p.add_argument("--phase", choices=("all", "models", "grid", "search"), default="all",
                   help="run one part: the models, the grid, or the search (then the report, with the grid's "
                        "numbers of an earlier --phase grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-search")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    files, overrides = inputs(args.size, out)
    ensure_models(files, overrides, args.size, out)
    if args.phase == "models":
        return 0
    # Each phase keeps its numbers (with the machine's load), so the two can run apart (e.g. each
    # within one turn of a shared machine's lock) and be reported together.
    phases = {"grid": lambda: run_grid(files, overrides, out, args.workers),
              "search": lambda: run_search(files, overrides, out, args.workers, args.trials, args.seed)}
    for name, run in phases.items():
        if args.phase in ("all", name):
            uptime = os.popen("uptime").read().strip()
            measured = {**run(), "uptime_before": uptime, "uptime_after": os.popen("uptime").read().strip()}
            (out / f"bench-{name}.json").write_text(json.dumps(measured, indent=1))
    if args.phase not in ("all", "search"):
        return 0
    grid, search = (json.loads((out / f"bench-{name}.json").read_text()) for name in phases)
    report = {"size": args.size, "workers": args.workers, "grid_points": GRID_POINTS, "grid": grid, "search": search}
    if grid["best_eval_macro_f1"] is not None and search["best_eval_macro_f1"] is not None:
        report["gap_points"] = round(100 * (grid["best_eval_macro_f1"] - search["best_eval_macro_f1"]), 2)
        report["compute_fraction_steps"] = round(search["steps"] / max(1, grid["steps"]), 3)
        report["compute_fraction_rows"] = round(search["rows"] / max(1, grid["rows"]), 3)
        report["compute_fraction_cpu"] = round(search["cpu_s"] / max(1e-9, grid["cpu_s"]), 3)
        report["compute_fraction_wall"] = round(search["wall_s"] / max(1e-9, grid["wall_s"]), 3)
    (out / "bench-search.json").write_text(json.dumps(report, indent=1))
    print("| run | trials | finished | pruned | best eval macro-F1 | train steps | train rows | CPU s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in (("full grid", grid), ("TPE + successive halving", search)):
        best = "n/a" if r["best_eval_macro_f1"] is None else f"{r['best_eval_macro_f1']:.4f}"
        print(f"| {name} | {r['trials']} | {r['finished']} | {r['pruned']} | {best} | {r['steps']} | {r['rows']} "
              f"| {r['cpu_s']} | {r['wall_s']} |")
    if "gap_points" in report:
        print(f"\nsearch vs grid: {report['gap_points']:+.2f} points below the grid's best, "
              f"{100 * report['compute_fraction_steps']:.0f}% of its steps, "
              f"{100 * report['compute_fraction_rows']:.0f}% of its rows, "
              f"{100 * report['compute_fraction_cpu']:.0f}% of its CPU time, "
              f"{100 * report['compute_fraction_wall']:.0f}% of its wall time")
    for name, r in (("grid", grid), ("search", search)):
        print(f"{name}: before: {r['uptime_before']}; after: {r['uptime_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
