"""Replay a finished bench/search.py grid through TPE + successive halving, without training.

A search trial trains exactly as the grid point of the same parameters (same content id, the
trainer is deterministic), so the grid's evaluation curves say what any search over the same
points would see. This replays them through Optuna's TPE sampler (constant liar, one sampler
seed per ask as the workers do) and successive-halving pruner, with N workers simulated by always
advancing the trial that is furthest behind in steps (the real workers run asynchronously, so a
real run can order its reports differently). For each setting it prints how often, over the
seeds, the best finished trial is within 1 point of the grid's best, and the share of the grid's
training steps spent. This is how bench/search.py's `medium` settings were chosen; its seeds
(100-129 by default) are not those of the real runs.

    .venv/bin/python bench/search_replay.py runs/bench-search-medium --min-resource 50 100 150 --reduction-factor 2 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def curves(out: Path) -> dict[tuple, list[tuple[int, float]]]:
    """(learning rate, batch size, warmup ratio) -> [(step, eval macro-F1 averaged over languages)]."""
    found = {}
    for trial in sorted((out / "grid").glob("part*/trials/*")):
        h = json.loads((trial / "result.json").read_text())["hyperparameters"]
        by_step: dict[int, list[float]] = {}
        for line in (trial / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("split") == "eval" and "macro_f1" in record:
                by_step.setdefault(record["step"], []).append(record["macro_f1"])
        found[(h["learning_rate"], h["batch_size"], h["warmup_ratio"])] = [
            (step, sum(v) / len(v)) for step, v in sorted(by_step.items())]
    return found


def replay(grid: dict, seed: int, budget: int, reduction_factor: int, min_resource: int, startup: int,
           workers: int) -> tuple[float, int]:
    """(best finished score, training steps spent) of one simulated search."""
    import optuna

    axes = [sorted({k[i] for k in grid}) for i in range(3)]
    space = {name: optuna.distributions.CategoricalDistribution(values)
             for name, values in zip(("learning_rate", "batch_size", "warmup_ratio"), axes, strict=True)}
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_resource, reduction_factor=reduction_factor))
    asked = 0

    def ask() -> list:
        nonlocal asked
        study.sampler = optuna.samplers.TPESampler(seed=seed + asked, n_startup_trials=startup, constant_liar=True)
        trial = study.ask(space)
        asked += 1
        return [trial, grid[tuple(trial.params[n] for n in space)], 0]

    running = [ask() for _ in range(min(workers, budget))]
    steps, scores = 0, []
    while running:
        running.sort(key=lambda r: r[1][r[2]][0])
        trial, curve, i = running[0]
        step, value = curve[i]
        trial.report(value, step)
        running[0][2] += 1
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif running[0][2] == len(curve):
            best = max(v for _, v in curve)  # the best checkpoint, as the study is told
            study.tell(trial, best)
            scores.append(best)
        else:
            continue
        steps += step
        running.pop(0)
        if asked < budget:
            running.append(ask())
    return max(scores, default=0.0), steps


def main(argv: list[str] | None = None) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="a bench/search.py --out folder with a finished grid")
    p.add_argument("--trials", type=int, nargs="+", default=[12])
    p.add_argument("--reduction-factor", type=int, nargs="+", default=[2, 3])
    p.add_argument("--min-resource", type=int, nargs="+", default=[50, 100, 150])
    p.add_argument("--startup-trials", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs=2, default=[100, 130], metavar=("FIRST", "STOP"))
    args = p.parse_args(argv)
    grid = curves(args.out)
    best = max(max(v for _, v in c) for c in grid.values())
    grid_steps = sum(c[-1][0] for c in grid.values())
    print(f"grid: {len(grid)} points, best {best:.4f}, {grid_steps} steps")
    print("| trials | min_resource | reduction factor | within 1 point | median gap (points) | steps (mean, max) |")
    print("|---|---|---|---|---|---|")
    for trials in args.trials:
        for min_resource in args.min_resource:
            for factor in args.reduction_factor:
                runs = [replay(grid, s, trials, factor, min_resource, args.startup_trials, args.workers)
                        for s in range(*args.seeds)]
                gaps = [100 * (best - b) for b, _ in runs]
                fractions = [s / grid_steps for _, s in runs]
                print(f"| {trials} | {min_resource} | {factor} | {sum(g <= 1 for g in gaps) / len(gaps):.0%} "
                      f"| {statistics.median(gaps):.1f} | {statistics.mean(fractions):.0%}, {max(fractions):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
