"""Issue 14 on the real SLURM test cluster: kills and signals at random moments never queue a
trial twice nor lose one (kill points drawn with a fixed seed)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from submit_helpers import make_plan  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]
REPO = str(Path(__file__).resolve().parent.parent)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO}  # SLURM_CONF as the fixture set it


def finetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, timeout=120,
                          env=env())


def queued_tasks(marker: str) -> list[str]:
    """Every queued array task whose job name contains ``marker`` (one line per task)."""
    out = subprocess.run(["squeue", "--me", "--array", "-h", "-o", "%i|%j"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if marker in line.split("|", 1)[1]]


def resubmit(plan: Path) -> subprocess.CompletedProcess[str]:
    """Submit again; while the killed submitter's sbatch still runs, the plan is busy: try again."""
    for _ in range(100):
        proc = finetune("submit", str(plan), "--executor", "slurm", "--max-array-size", "5", "--yes")
        if "another submit" not in proc.stderr:
            return proc
        time.sleep(0.2)
    raise AssertionError(proc.stderr)


def test_sigkilled_submitter_never_queues_a_trial_twice(slurm_cluster, tmp_path):
    rng = random.Random(14)
    n = 20
    try:
        for attempt in range(3):
            plan = tmp_path / f"killplan{attempt}"
            make_plan(plan, n, slurm={"extra": {"hold": True}})
            proc = subprocess.Popen([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", "slurm",
                                     "--max-array-size", "5", "--yes"], env=env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # wait for the first array, then kill at a random moment among the sbatch calls
            end = time.monotonic() + 60
            while not queued_tasks(f"killplan{attempt}") and time.monotonic() < end and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            again = resubmit(plan)
            assert again.returncode == 0, again.stderr
            tasks = queued_tasks(f"killplan{attempt}")
            assert len(tasks) == n, f"attempt {attempt}: {len(tasks)} tasks queued for {n} trials"
            st = finetune("status", str(plan), "--json")
            assert json.loads(st.stdout)["counts"] == {"pending": n}, st.stdout
    finally:
        subprocess.run(["scancel", "--me"], capture_output=True)


def test_deleted_manifest_does_not_double_queued_trials(slurm_cluster, tmp_path):
    plan = tmp_path / "lostmanifest"
    n = 7
    make_plan(plan, n, slurm={"extra": {"hold": True}})
    try:
        first = finetune("submit", str(plan), "--executor", "slurm", "--max-array-size", "5", "--yes")
        assert first.returncode == 0, first.stderr
        (plan / "manifest.json").unlink()
        again = finetune("submit", str(plan), "--executor", "slurm", "--max-array-size", "5", "--yes")
        assert again.returncode == 0, again.stderr
        assert len(queued_tasks("lostmanifest")) == n
        cancelled = finetune("cancel", str(plan))
        assert cancelled.returncode == 0, cancelled.stderr
        time.sleep(1)
        assert queued_tasks("lostmanifest") == []
    finally:
        subprocess.run(["scancel", "--me"], capture_output=True)


def test_usr2_right_at_the_start_of_a_job_requeues_it(slurm_cluster, tmp_path):
    rng = random.Random(1414)
    plan = tmp_path / "usr2early"
    tid = make_plan(plan, 1, count_to=20, count_sleep_s=0.05)[0]
    trial = plan / "trials" / tid
    first = finetune("submit", str(plan), "--executor", "slurm")
    assert first.returncode == 0, first.stderr
    job = json.loads((plan / "manifest.json").read_text())["submissions"][0]["job_id"]
    signalled = 0
    end = time.monotonic() + 150
    while signalled < 3 and time.monotonic() < end:  # USR2 within moments of each (re)start
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if state == "RUNNING":
            time.sleep(rng.uniform(0.0, 0.3))
            subprocess.run(["scancel", "--signal=USR2", "--batch", job], capture_output=True)
            signalled += 1
            while subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                                 text=True).stdout.strip() == "RUNNING" and time.monotonic() < end:
                time.sleep(0.05)
        elif not state:
            break
        time.sleep(0.02)
    assert signalled >= 2
    end = time.monotonic() + 150
    while not (trial / "result.json").exists() and time.monotonic() < end:
        time.sleep(0.3)
    result = json.loads((trial / "result.json").read_text())
    assert result["count"] == 20 and result["restart_count"] >= 1  # requeued, never FAILED
    starts = [r["start"] for r in result["runs"]]
    assert starts == sorted(starts)
