"""Submit benchmark on the real single-node cluster: job arrays vs one sbatch per trial.

    .venv/bin/python bench/submit.py [--trials 1000]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()

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
