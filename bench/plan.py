"""Planning cost: validate, expand and write plan.json for 1k, 10k and 100k trials (a dry run:
nothing is materialised or submitted). Goal: 100k trials in under 5 s, cost linear in trials.

    .venv/bin/python bench/plan.py            # 1k, 10k, 100k
    .venv/bin/python bench/plan.py 1000 5000  # chosen sizes
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIGS = [str(REPO / "config" / n) for n in ("finetune-rus-pol.json", "finetune-rus-pol-topic.json", "data-local.json")]


def grid_for(trials: int) -> dict:
    """A grid of exactly ``trials`` trials over 2 model types (trials must be even)."""
    per_type = trials // 2
    seeds = 10 if per_type % 10 == 0 else 1
    rest = per_type // seeds
    lrs = [round(1e-5 * (i + 1), 8) for i in range(rest)]
    return {"parameters": {"learning_rate": lrs, "seed": list(range(seeds))}}


def bench(trials: int, tmp: Path) -> dict:
    from finetune.layout import plan_file
    from finetune.login.plan import build_plan, load_plan, write_plan

    grid_path = tmp / f"grid-{trials}.json"
    grid_path.write_text(json.dumps(grid_for(trials)))
    out = tmp / f"plan-{trials}"
    t0 = time.perf_counter()
    plan = build_plan(CONFIGS, grid_config=str(grid_path))
    t1 = time.perf_counter()
    report = write_plan(plan, out)
    t2 = time.perf_counter()
    loaded = load_plan(out)
    t3 = time.perf_counter()
    assert len(plan.trials) == trials == report.total == len(loaded.trials), (len(plan.trials), trials)
    size = plan_file(out).stat().st_size
    return {"trials": trials, "build_s": t1 - t0, "write_s": t2 - t1, "total_s": t2 - t0, "load_s": t3 - t2,
            "plan_mb": size / 1e6}


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [1_000, 10_000, 100_000]
    print(f"{'trials':>8} {'build s':>8} {'write s':>8} {'total s':>8} {'us/trial':>9} {'load s':>7} {'plan MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = bench(n, Path(tmp))
            print(f"{r['trials']:>8} {r['build_s']:>8.2f} {r['write_s']:>8.2f} {r['total_s']:>8.2f} "
                  f"{1e6 * r['total_s'] / n:>9.1f} {r['load_s']:>7.2f} {r['plan_mb']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
