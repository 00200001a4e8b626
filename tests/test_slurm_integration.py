"""The real thing: a single-node SLURM cluster with accounting (scripts/slurm-cluster.sh).

The cluster boots once per session under a temporary directory on free ports and is stopped at
the end (everything it started is killed). If it cannot start, these tests FAIL: they are not
optional. Jobs run the ``count`` stand-in workload, so each takes a second or two.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from finetune.login.manifest import load as load_manifest
from finetune.login.status import plan_status
from finetune.login.submit import submit

sys.path.insert(0, str(Path(__file__).parent))
import waiting  # noqa: E402
from submit_helpers import make_plan  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def wait_until(check: Callable[[], object], timeout: float = 90, what: str = "condition") -> object:
    return waiting.wait_until(check, timeout, what, every=0.3)


def counts(plan: Path) -> dict[str, int]:
    return plan_status(plan).counts


def all_done(plan: Path, n: int) -> Callable[[], bool]:
    return lambda: sum(counts(plan).get(s, 0) for s in ("finished", "failed", "cancelled")) == n


def runs_in_log(trial: Path) -> int:
    return (trial / "log.txt").read_text().count("count: starting")


def finetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, timeout=120)


def test_arrays_and_reruns_have_zero_duplicates(slurm_cluster, tmp_path):
    plan = tmp_path / "plan with space"  # also: the quoted --output reaches sbatch whole
    ids = make_plan(plan, 4, count_to=3)
    first = submit(plan, executor="auto", throttle=2)
    assert first.executor == "slurm" and first.sbatch_calls == 1 and first.submitted == ids
    again = submit(plan, executor="slurm")  # at once: all four are queued or running
    assert again.submitted == [] and again.active == ids and again.sbatch_calls == 0
    wait_until(lambda: counts(plan) == {"finished": 4}, what="4 finished trials")
    third = submit(plan, executor="slurm")
    assert third.finished == ids and third.sbatch_calls == 0
    assert len(load_manifest(plan)["submissions"]) == 4
    for tid in ids:
        trial = plan / "trials" / tid
        assert runs_in_log(trial) == 1 and json.loads((trial / "result.json").read_text())["count"] == 3
    assert list((plan / "jobs" / "logs").iterdir()) != []  # sbatch took the quoted output path


def test_failures_are_reported_with_reason_and_rerun_alone(slurm_cluster, tmp_path):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 2, count_to=2, per_trial={1: {"training": {"count_fail_at": 1}}})
    job = submit(plan, executor="slurm").job_ids[0]
    wait_until(all_done(plan, 2), what="both trials to end")
    report = wait_until(lambda: (r := plan_status(plan)).trials[1].reason == "exit code 1" and r,
                        what="sacct to record the failure")
    assert report.accounting and report.counts == {"finished": 1, "failed": 1}
    assert report.trials[1].job == f"{job}_1" and "count: failing on purpose at 1" in report.trials[1].log_tail
    cli = finetune("status", str(plan))
    assert cli.returncode == 0 and "failed 1" in cli.stdout and "[exit code 1]" in cli.stdout
    rerun = submit(plan, executor="slurm")
    assert rerun.submitted == [ids[1]] and rerun.finished == [ids[0]]
    wait_until(all_done(plan, 2), what="the rerun to end")
    assert runs_in_log(plan / "trials" / ids[0]) == 1 and runs_in_log(plan / "trials" / ids[1]) == 2


def test_cancel_then_resubmit(slurm_cluster, tmp_path):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 3, count_to=100000, count_sleep_s=0.05)
    submit(plan, executor="slurm", throttle=1)
    wait_until(lambda: counts(plan).get("running") == 1, what="one running trial")
    cli = finetune("cancel", str(plan))
    assert cli.returncode == 0 and "cancelled 3 trials" in cli.stdout, cli.stderr
    wait_until(lambda: counts(plan) == {"cancelled": 3}, what="3 cancelled trials")
    again = submit(plan, executor="slurm")
    assert again.submitted == ids
    wait_until(lambda: counts(plan).get("running") == 2, what="two running trials")
    assert finetune("cancel", str(plan)).returncode == 0
    wait_until(lambda: counts(plan) == {"cancelled": 3}, what="cancelled again")


def test_usr2_at_a_random_point_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    plan = tmp_path / "plan"
    target = 60
    tid = make_plan(plan, 1, count_to=target, count_sleep_s=0.05)[0]
    trial = plan / "trials" / tid
    ckpt = trial / "checkpoints" / "count.json"
    job = submit(plan, executor="slurm").job_ids[0]
    at = random.randint(2, target // 2)
    wait_until(lambda: ckpt.is_file() and json.loads(ckpt.read_text())["count"] >= at, what=f"count {at}")
    sig = subprocess.run(["scancel", "--signal=USR2", "--batch", f"{job}_0"], capture_output=True, text=True)
    assert sig.returncode == 0, sig.stderr
    # result.json first, then the batch script's last log line as the job ends
    wait_until(lambda: (trial / "result.json").is_file() and "exited with" in (trial / "log.txt").read_text(),
               timeout=60, what="the requeued job to finish")
    result = json.loads((trial / "result.json").read_text())
    state = json.loads((trial / "state.json").read_text())
    assert result["count"] == target and state["state"] == "finished"
    assert state["restart_count"] == 1 and result["restart_count"] == 1
    assert [r["restart_count"] for r in result["runs"]] == [0, 1] and result["runs"][1]["start"] >= at
    log = (trial / "log.txt").read_text()
    assert "USR2: asking trial" in log and "requeueing job" in log and "exited with 0" in log
    assert plan_status(plan).trials[0].restart_count == 1


def test_scontrol_requeue_resumes_from_the_last_checkpoint(slurm_cluster, tmp_path):
    plan = tmp_path / "plan"
    target = 60
    tid = make_plan(plan, 1, count_to=target, count_sleep_s=0.05)[0]
    trial = plan / "trials" / tid
    ckpt = trial / "checkpoints" / "count.json"
    job = submit(plan, executor="slurm").job_ids[0]
    wait_until(lambda: ckpt.is_file() and json.loads(ckpt.read_text())["count"] >= random.randint(2, 20),
               what="counting")
    assert subprocess.run(["scontrol", "requeue", f"{job}_0"], capture_output=True).returncode == 0
    requeued = time.time()  # slurmctld revoked the running job's credential before this

    def pending() -> bool:
        out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        return out.strip() == "PENDING"

    wait_until(pending, what="the job back in the queue")
    # Without this the requeued job would wait 120 s (BeginTime). But slurmd refuses to launch a job
    # whose credential was issued in the second (or before) of the requeue that revoked the old one
    # (ctime <= revoked, whole seconds; slurmctld's clock when it sent the requeue's kill): "Job
    # credential revoked", and the job ends instead of running again. So lift BeginTime only once the
    # clock has left the requeue's second, as the job script's own requeue helper does (it waits 2 s).
    time.sleep(max(0.0, math.floor(requeued) + 1.05 - time.time()))
    assert subprocess.run(["scontrol", "update", f"jobid={job}_0", "StartTime=now"]).returncode == 0

    def why() -> str:
        acct = subprocess.run(["sacct", "-j", job, "--duplicates", "-X", "-n", "-P", "-o", "JobID,State,ExitCode"],
                              capture_output=True, text=True).stdout
        log = slurm_cluster / "log" / "slurmd.log"
        return f"sacct: {acct}slurmd.log:\n" + "\n".join(log.read_text().splitlines()[-15:])

    waiting.wait_until(lambda: (trial / "result.json").is_file(), 60, "the requeued job to finish", every=0.3,
                       context=why)
    result = json.loads((trial / "result.json").read_text())
    assert result["count"] == target and result["restart_count"] == 1 and len(result["runs"]) == 2


def test_old_style_template_in_split_arrays(slurm_cluster, tmp_path):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 3, count_to=2)
    report = submit(plan, executor="slurm", template=REPO / "jobs" / "templates" / "old-style.sbatch",
                    max_array_size=2)
    assert report.sbatch_calls == 2 and [len(j.trial_ids) for j in report.arrays] == [2, 1]
    wait_until(lambda: counts(plan) == {"finished": 3}, what="3 finished trials")
    for tid in ids:
        assert runs_in_log(plan / "trials" / tid) == 1


def test_submitit_executor(slurm_cluster, tmp_path):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 2, count_to=2)
    report = submit(plan, executor="submitit")
    assert report.submitted == ids and report.job_ids[0].isdigit()
    assert submit(plan, executor="submitit").submitted == []  # queued: no duplicates
    wait_until(lambda: counts(plan) == {"finished": 2}, what="2 finished trials")
    assert {e["executor"] for e in load_manifest(plan)["submissions"]} == {"submitit"}
