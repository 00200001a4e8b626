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
from waiting import wait_until  # noqa: E402

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


def resubmit(plan: Path, executor: str = "slurm") -> subprocess.CompletedProcess[str]:
    """Submit again; while the killed submitter's sbatch still runs, the plan is busy: try again."""
    for _ in range(100):
        proc = finetune("submit", str(plan), "--executor", executor, "--max-array-size", "5", "--yes")
        if "another submit" not in proc.stderr:
            return proc
        time.sleep(0.2)
    raise AssertionError(proc.stderr)


def test_sigkilled_submitter_never_queues_a_trial_twice(slurm_cluster, tmp_path):
    rng = random.Random(14)
    executor = "slurm"
    n = 20
    try:
        for attempt in range(3):
            marker = f"kill{executor}{attempt}"
            plan = tmp_path / marker
            make_plan(plan, n, slurm={"extra": {"hold": True}})
            proc = subprocess.Popen([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", executor,
                                     "--max-array-size", "5", "--yes"], env=env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # wait for the first array, then kill at a random moment among the sbatch calls
            end = time.monotonic() + 60
            while not queued_tasks(marker) and time.monotonic() < end and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            again = resubmit(plan, executor)
            assert again.returncode == 0, again.stderr
            tasks = queued_tasks(marker)
            assert len(tasks) == n, f"attempt {attempt}: {len(tasks)} tasks queued for {n} trials"
            st = finetune("status", str(plan), "--json")
            assert json.loads(st.stdout)["counts"] == {"pending": n}, st.stdout
    finally:
        subprocess.run(["scancel", "--me"], capture_output=True)


@pytest.mark.parametrize("executor", ["slurm", "submitit"])
def test_a_submitter_killed_while_sbatch_runs_never_queues_a_trial_twice(slurm_cluster, tmp_path, executor):
    """The gap itself, hit every time: an sbatch that takes a second (a wrapper on PATH), the
    submitter SIGKILLed during the k-th one (k drawn with a seed). That sbatch still queues its array
    after its parent is gone; the rerun must wait for it and adopt it, through sbatch and through
    submitit (whose sbatch inherits no descriptor of ours)."""
    rng = random.Random(1414)
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    (slow / "sbatch").write_text(f'#!/bin/bash\nn=$(( $(cat {slow}/count 2>/dev/null || echo 0) + 1 ))\n'
                                 f'echo $n > {slow}/count\ntouch {slow}/started.$n\nsleep 1\nexec {real} "$@"\n')
    (slow / "sbatch").chmod(0o755)
    e = {**env(), "PATH": f"{slow}:{os.environ['PATH']}"}
    n = 20
    try:
        for attempt in range(2):
            marker = f"slow{executor}{attempt}"
            plan = tmp_path / marker
            make_plan(plan, n, slurm={"extra": {"hold": True}})
            for f in slow.glob("started.*"):
                f.unlink()
            (slow / "count").unlink(missing_ok=True)
            k = rng.randint(1, 4)  # 4 arrays of 5
            proc = subprocess.Popen([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", executor,
                                     "--max-array-size", "5", "--yes"], env=e,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: (slow / f"started.{k}").exists(), 120, f"sbatch call {k}", every=0.02)  # noqa: B023
            time.sleep(0.3)  # inside that sbatch's second
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            for _ in range(200):  # while the orphaned sbatch runs, the plan is busy
                again = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", executor,
                                        "--max-array-size", "5", "--yes"], env=e, capture_output=True, text=True,
                                       timeout=120)
                if "another submit" not in again.stderr:
                    break
                time.sleep(0.2)
            assert again.returncode == 0, again.stderr
            tasks = queued_tasks(marker)
            assert len(tasks) == n, f"attempt {attempt} (killed in sbatch {k}): {len(tasks)} tasks for {n} trials"
            st = finetune("status", str(plan), "--json")
            assert json.loads(st.stdout)["counts"] == {"pending": n}, st.stdout
    finally:
        subprocess.run(["scancel", "--me"], capture_output=True)


@pytest.mark.parametrize("executor", ["slurm", "submitit"])
def test_deleted_manifest_does_not_double_queued_trials(slurm_cluster, tmp_path, executor):
    marker = f"lostmanifest{executor}"
    plan = tmp_path / marker
    n = 7
    make_plan(plan, n, slurm={"extra": {"hold": True}})
    try:
        first = finetune("submit", str(plan), "--executor", executor, "--max-array-size", "5", "--yes")
        assert first.returncode == 0, first.stderr
        (plan / "manifest.json").unlink()
        again = finetune("submit", str(plan), "--executor", executor, "--max-array-size", "5", "--yes")
        assert again.returncode == 0, again.stderr
        assert len(queued_tasks(marker)) == n
        adopted = json.loads((plan / "manifest.json").read_text())["submissions"]
        assert len(adopted) == n and {e["executor"] for e in adopted} == {executor}  # who queued them
        cancelled = finetune("cancel", str(plan))
        assert cancelled.returncode == 0, cancelled.stderr
        time.sleep(1)
        assert queued_tasks(marker) == []
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


def test_an_old_style_template_requeues_on_usr2_and_resumes_exactly(slurm_cluster, tmp_path):
    """The original scripts' kind of template knows nothing of USR2: submit adds the protocol, so a
    USR2 right at the start of the job and one at a random count both end in a requeue and the trial
    goes on from exactly where it checkpointed."""
    rng = random.Random(1415)
    plan = tmp_path / "oldstyle"
    target = 40
    tid = make_plan(plan, 1, count_to=target, count_sleep_s=0.05)[0]
    trial = plan / "trials" / tid
    ckpt = trial / "checkpoints" / "count.json"
    first = finetune("submit", str(plan), "--executor", "slurm", "--template",
                     f"{REPO}/jobs/templates/old-style.sbatch")
    assert first.returncode == 0, first.stderr
    job = json.loads((plan / "manifest.json").read_text())["submissions"][0]["job_id"]

    def state() -> str:
        return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()

    def usr2() -> None:
        assert subprocess.run(["scancel", "--signal=USR2", "--batch", job], capture_output=True).returncode == 0

    def log() -> str:
        return (trial / "log.txt").read_text() if (trial / "log.txt").exists() else ""

    wait_until(lambda: state() == "RUNNING", 60, "the job to start")
    time.sleep(rng.uniform(0.0, 0.3))
    usr2()  # 1: at once, before or while the trial starts
    wait_until(lambda: state() in ("PENDING", "REQUEUED", ""), 60, "the job to leave the node")
    at = rng.randint(8, 25)
    wait_until(lambda: state() == "RUNNING" and ckpt.is_file() and json.loads(ckpt.read_text())["count"] >= at,
               90, f"count {at} after the requeue")
    usr2()  # 2: in the middle of the count
    wait_until(lambda: (trial / "result.json").is_file(), 120, "the trial to finish", context=log)
    result = json.loads((trial / "result.json").read_text())
    assert result["count"] == target and result["restart_count"] >= 2, result
    # every run starts exactly where the one before checkpointed
    lines = [line for line in log().splitlines() if line.startswith("count: ")]
    stops = [int(line.split()[3].rstrip(";")) for line in lines if line.startswith("count: USR2 at")]
    starts = [int(line.split()[3]) for line in lines if line.startswith("count: starting at")]
    assert stops and stops[-1] >= at and starts[1:] == stops, lines
    assert [r["start"] for r in result["runs"]] == starts
    assert lines[-1] == f"count: finished at {target}"
