"""Submit benchmarks: job arrays vs one sbatch per trial on the real cluster; dry runs at scale.

    .venv/bin/python bench/submit.py [--trials 1000]
    .venv/bin/python bench/submit.py --dry-run 100000 1000000
    .venv/bin/python bench/submit.py --scale 100000 --per-task 100
    .venv/bin/python bench/submit.py --collect 20000 50000 100000 [--reference ROOT]

--scale N --per-task K: the real submit of a plan of N count trials with ``slurm.trials_per_task``
K (N/K array tasks, held so nothing runs) to a test cluster it starts; prints the wall time and
peak memory of planning, the submit (sbatch calls), ``status`` with every task queued (one squeue,
one sacct), then cancels everything and stops the cluster.

--collect N...: ``collect`` of N finished trials (a count-workload result.json each, written by the
bench first) and ``write_tables``, for each N: wall time and peak memory of a fresh process that
only collects (flat memory shows as the same peak at 20k, 50k and 100k). ``--reference ROOT``:
the same with the code of another checkout (``git archive COMMIT finetune | tar -x -C ROOT``)
on the same plan, and whether the four tables are byte for byte the same.

--dry-run N...: no cluster. For each N (in a fresh process, so peak memory is its own), plans a
grid of N count trials (build + write plan.json), dry-runs the submit (slurm executor,
MaxArraySize 1001), then runs status and collect on the plan (trials without folders), and prints
wall time of each step, the process's peak memory and the files the plan folder holds.

Starts its own cluster (scripts/slurm-cluster.sh, temp dir, free ports), plans a uniform grid of
N count trials twice, submits one copy through ``finetune.login.submit`` (job arrays) and the other
with one sbatch per trial (the same code path with --max-array-size 1), all with
``slurm.extra.hold`` so nothing runs, then cancels everything and stops the cluster. Prints
sbatch calls, wall time and the ratio. Speed goals live here, never in the tests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
CONFIGS = [str(REPO / "config" / n) for n in ("finetune-rus-pol.json", "finetune-rus-pol-topic.json", "data-local.json")]


def bench_plan(trials: int, root: Path, sets: list[str]):
    """The benchmark's plan of ``trials`` count trials (nothing written but ROOT/grid.json):
    learning rates x 10 seeds (1 seed when ``trials`` is not a multiple of 10), normal model type,
    the shipped rus-pol configs with ``sets``."""
    import json

    from finetune.login.plan import build_plan

    seeds = 10 if trials % 10 == 0 else 1
    grid = root / "grid.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": [round(1e-6 * (i + 1), 9) for i in range(trials // seeds)],
                                               "seed": list(range(seeds))}}))
    return build_plan(CONFIGS, sets, grid_config=str(grid), model_types=("normal",))


def dry_run_one(trials: int, root: Path) -> dict:
    import os

    from finetune.analysis.results import collect
    from finetune.login.plan import load_plan, write_plan
    from finetune.login.status import plan_status
    from finetune.login.submit import submit

    out = root / "plan"
    t0 = time.perf_counter()
    plan = bench_plan(trials, root, ["training.workload=count"])
    write_plan(plan, out)
    del plan
    t1 = time.perf_counter()
    report = submit(out, executor="slurm", dry_run=True, max_array_size=1001)
    t2 = time.perf_counter()
    assert sum(len(j.trial_ids) for j in report.arrays) == trials
    del report
    t3 = time.perf_counter()
    load_plan(out)
    t4 = time.perf_counter()
    status = plan_status(out)
    t5 = time.perf_counter()
    table = collect(out, metric="loss")
    t6 = time.perf_counter()
    assert len(status.trials) == len(table.rows) == trials
    files = sum(len(f) for _, _, f in os.walk(out))
    size = sum(os.path.getsize(os.path.join(d, x)) for d, _, f in os.walk(out) for x in f)
    return {"trials": trials, "plan_s": t1 - t0, "dry_run_s": t2 - t1, "load_s": t4 - t3, "status_s": t5 - t4,
            "collect_s": t6 - t5, "files": files, "mb": size / 1e6, "peak_gb": _peak_gb()}


def dry_runs(sizes: list[int]) -> int:
    import json

    print(f"{'trials':>8} {'plan s':>7} {'dry-run s':>9} {'files':>6} {'MB':>7} {'load s':>7} {'status s':>8} "
          f"{'collect s':>9} {'peak GB':>8}")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
            proc = subprocess.run([sys.executable, __file__, "--one-dry-run", str(n), tmp], capture_output=True,
                                  text=True, check=True)
        r = json.loads(proc.stdout.splitlines()[-1])
        print(f"{r['trials']:>8} {r['plan_s']:>7.1f} {r['dry_run_s']:>9.1f} {r['files']:>6} {r['mb']:>7.0f} "
              f"{r['load_s']:>7.1f} {r['status_s']:>8.1f} {r['collect_s']:>9.1f} {r['peak_gb']:>8.2f}")
    return 0


def _peak_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def scale_one(trials: int, per_task: int) -> dict:
    """Plan, submit (held) and ask the status of ``trials`` trials on a test cluster of its own."""
    import os

    from finetune.login.plan import write_plan
    from finetune.login.status import plan_status
    from finetune.login.submit import submit

    script = REPO / "scripts" / "slurm-cluster.sh"
    out: dict = {"trials": trials, "per_task": per_task}
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
        root = Path(tmp)
        cluster = root / "cluster"
        subprocess.run(["bash", str(script), "start", str(cluster)], check=True, capture_output=True, timeout=300)
        os.environ["SLURM_CONF"] = str(cluster / "etc" / "slurm.conf")
        try:
            plan_dir = root / "plan"
            t0 = time.perf_counter()
            plan = bench_plan(trials, root, ["training.workload=count", "slurm.cpus_per_task=1",
                                             f"slurm.trials_per_task={per_task}", 'slurm.extra={"hold": true}'])
            write_plan(plan, plan_dir)
            del plan
            out["plan_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = submit(plan_dir, executor="slurm")
            out["submit_s"] = time.perf_counter() - t0
            out["sbatch_calls"] = report.sbatch_calls
            out["submitted"] = len(report.submitted)
            out["deferred"] = len(report.deferred)
            queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()
            out["queued_tasks"] = len(queued)
            t0 = time.perf_counter()
            status = plan_status(plan_dir)
            out["status_s"] = time.perf_counter() - t0
            out["status_counts"] = status.counts
            out["files"] = sum(len(f) for _, _, f in os.walk(plan_dir))
            out["peak_gb"] = _peak_gb()
        finally:
            subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], capture_output=True)
            subprocess.run(["bash", str(script), "stop", str(cluster)], capture_output=True, timeout=180)
    return out


def finished_plan(trials: int, root: Path) -> Path:
    """A plan of ``trials`` finished count trials under ``root`` (a result.json each)."""
    import json

    from finetune import layout
    from finetune.login.plan import write_plan

    out = root / "plan"
    plan = bench_plan(trials, root, ["training.workload=count"])
    write_plan(plan, out)
    for i, t in enumerate(plan.trials):  # what a finished trial leaves (metrics of one evaluation)
        d = layout.trial_dir(out, t.id)
        d.mkdir(parents=True)
        f1 = (i % 97) / 100
        split = {"loss": 1 - f1, "accuracy": f1, "macro_precision": f1, "macro_recall": f1, "macro_f1": f1}
        (d / "result.json").write_text(json.dumps({
            "state": "finished", "trial": t.id, "model_type": t.model_type, "train_languages": t.train_languages,
            "eval_languages": t.eval_languages, "hyperparameters": t.hyperparameters, "best_step": 10,
            "metrics": {lang: {"eval": split, "test": split} for lang in t.eval_languages}}))
    return out


def _hwm_gb() -> float:
    """This process's peak resident memory since it started (VmHWM): unlike ru_maxrss, which
    keeps the parent's size across fork and exec, it is the child's own."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 1e6


def collect_one(plan_dir: Path) -> dict:
    """``collect`` + ``write_tables`` of the plan in ``plan_dir`` (in a process of its own: the
    peak memory is theirs, not that of writing the plan)."""
    from finetune.analysis.results import collect, write_tables

    before = _hwm_gb()
    t0 = time.perf_counter()
    table = collect(plan_dir, metric="macro_f1")
    write_tables(table)
    wall = time.perf_counter() - t0
    return {"collect_s": wall, "rows": len(table.rows), "peak_gb_before": before, "peak_gb": _hwm_gb()}


TABLES = ("results.csv", "results.md", "summary.csv", "best.csv")


def collects(sizes: list[int], reference: str | None) -> int:
    """For each N: a plan of N finished trials, then collect in a fresh process (wall, peak
    memory); with ``reference`` (another checkout's root), its collect too, and whether the four
    tables are byte for byte the same."""
    import json
    import os
    import shutil

    def run(code: Path, plan: Path) -> dict:
        env = {**os.environ, "PYTHONPATH": str(code)}
        proc = subprocess.run([sys.executable, __file__, "--one-collect", str(plan), str(code)], capture_output=True,
                              text=True, check=True, env=env)
        return json.loads(proc.stdout.splitlines()[-1])

    print(f"{'trials':>8} {'collect s':>9} {'peak GB':>8} {'before GB':>9}"
          + (f" {'ref s':>7} {'ref GB':>7} {'tables':>9}" if reference else ""))
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
            plan = finished_plan(n, Path(tmp))
            line = ""
            if reference:
                ref = run(Path(reference), plan)
                kept = Path(tmp) / "reference"
                kept.mkdir()
                for name in TABLES:
                    shutil.move(str(plan / name), str(kept / name))
            r = run(REPO, plan)
            if reference:
                same = all((plan / name).read_bytes() == (kept / name).read_bytes() for name in TABLES)
                line = f" {ref['collect_s']:>7.1f} {ref['peak_gb']:>7.3f} {'identical' if same else 'DIFFER':>9}"
        print(f"{n:>8} {r['collect_s']:>9.1f} {r['peak_gb']:>8.3f} {r['peak_gb_before']:>9.3f}" + line, flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--dry-run", type=int, nargs="+", metavar="N", help="dry-run benchmarks of N trials (no cluster)")
    parser.add_argument("--one-dry-run", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, metavar="N", help="real submit of N trials to a test cluster (held)")
    parser.add_argument("--per-task", type=int, default=100, help="slurm.trials_per_task for --scale")
    parser.add_argument("--collect", type=int, nargs="+", metavar="N", help="collect N finished trials")
    parser.add_argument("--reference", metavar="ROOT", help="--collect: also run the collect of the checkout at "
                        "ROOT (e.g. `git archive COMMIT finetune | tar -x -C ROOT`) and compare the tables byte for byte")
    parser.add_argument("--one-collect", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_collect:
        import json

        sys.path.insert(0, args.one_collect[1])
        print(json.dumps(collect_one(Path(args.one_collect[0]))))
        return 0
    if args.collect:
        sys.path.insert(0, str(REPO))
        return collects(args.collect, args.reference)
    if args.scale:
        import json

        sys.path.insert(0, str(REPO))
        print(json.dumps(scale_one(args.scale, args.per_task)))
        return 0
    if args.one_dry_run:
        import json

        sys.path.insert(0, str(REPO))
        print(json.dumps(dry_run_one(int(args.one_dry_run[0]), Path(args.one_dry_run[1]))))
        return 0
    if args.dry_run:
        return dry_runs(args.dry_run)

    import os

    from submit_helpers import make_plan

    from finetune.login.submit import submit

    script = REPO / "scripts" / "slurm-cluster.sh"
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
        root = Path(tmp)
        cluster = root / "cluster"
        t0 = time.perf_counter()
        subprocess.run(["bash", str(script), "start", str(cluster)], check=True, capture_output=True, timeout=180)
        boot = time.perf_counter() - t0
        os.environ["SLURM_CONF"] = str(cluster / "etc" / "slurm.conf")
        try:
            held = {"extra": {"hold": True}}
            arrays_plan, single_plan = root / "arrays", root / "single"
            make_plan(arrays_plan, args.trials, slurm=held)
            make_plan(single_plan, args.trials, slurm=held)

            t0 = time.perf_counter()
            a = submit(arrays_plan, executor="slurm")
            t_arrays = time.perf_counter() - t0

            t0 = time.perf_counter()
            s = submit(single_plan, executor="slurm", max_array_size=1)
            t_single = time.perf_counter() - t0

            queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()
            print(f"cluster boot: {boot:.1f} s")
            print(f"arrays:       {a.sbatch_calls:5d} sbatch calls, {t_arrays:7.2f} s for {len(a.submitted)} trials")
            print(f"per trial:    {s.sbatch_calls:5d} sbatch calls, {t_single:7.2f} s for {len(s.submitted)} trials")
            print(f"speed-up:     {t_single / t_arrays:.0f}x wall time, {s.sbatch_calls // max(1, a.sbatch_calls)}x fewer sbatch calls")
            print(f"queued tasks: {len(queued)} (expected {2 * args.trials})")
        finally:
            subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], capture_output=True)
            subprocess.run(["bash", str(script), "stop", str(cluster)], capture_output=True, timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
