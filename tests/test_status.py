"""Trial states from one squeue + one sacct (stubbed), failure reasons, log tails, no accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.login.executors.base import TaskState
from finetune.login.executors.slurm import parse_sacct, parse_squeue
from finetune.login.status import plan_status
from finetune.login.submit import submit

sys.path.insert(0, str(Path(__file__).parent))
from submit_helpers import SlurmStubs, make_plan  # noqa: E402

FINISHED = json.dumps({"state": "finished", "metrics": {}})


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    s = SlurmStubs(tmp_path)
    monkeypatch.setenv("PATH", f"{s.dir}:{os.environ['PATH']}")
    return s


def test_parse_squeue_expands_arrays_and_filters_jobs():
    text = "7_3|RUNNING|None\n7_[4-6,9%2]|PENDING|JobArrayTaskLimit\n8|PENDING|Priority\n99_1|RUNNING|None\n"
    got = parse_squeue(text, {"7", "8"})
    assert got == {"7_3": TaskState("RUNNING"), **{f"7_{i}": TaskState("PENDING", "JobArrayTaskLimit")
                                                   for i in (4, 5, 6, 9)}, "8_0": TaskState("PENDING", "Priority")}


def test_parse_sacct_skips_steps_and_keeps_exit_codes():
    text = ("5_0|COMPLETED|0:0\n5_0.batch|COMPLETED|0:0\n5_1|OUT_OF_MEMORY|0:125\n5_2|CANCELLED by 0|0:15\n"
            "5_[3-4]|PENDING|0:0\n6|FAILED|2:0\n")
    got = parse_sacct(text)
    assert got["5_1"].state == "OUT_OF_MEMORY" and got["5_2"].state == "CANCELLED"
    assert got["5_4"].state == "PENDING" and got["6_0"] == TaskState("FAILED", "2:0", "2:0")
    assert "5_0.batch" not in got and len(got) == 6


def test_a_task_slurm_requeued_after_a_node_failure_says_so(tmp_path):
    """sacct --duplicates: one record per run, oldest first; status names the earlier failure."""
    from finetune.login.status import classify

    text = ("9_0|NODE_FAIL|0:0|ftnode[1-2]\n9_0.batch|CANCELLED|0:15|ftnode1\n9_0|PENDING|0:0|None assigned\n")
    acct = parse_sacct(text)
    assert acct["9_0"].state == "PENDING" and acct["9_0"].earlier == ("NODE_FAIL on ftnode[1-2]",)
    entry = {"job_id": "9", "array_index": 0, "trial_id": "t", "executor": "slurm"}
    (tmp_path / "t").mkdir()
    got = classify("t", tmp_path / "t", entry, {"9_0": TaskState("PENDING", "BeginTime")}, acct)
    assert (got.state, got.reason) == ("pending", "requeued by SLURM after NODE_FAIL on ftnode[1-2]; BeginTime")
    got = classify("t", tmp_path / "t", entry, {"9_0": TaskState("RUNNING")}, acct)
    assert (got.state, got.reason) == ("running", "requeued by SLURM after NODE_FAIL on ftnode[1-2]")


def test_every_state_and_reason_from_one_squeue_and_one_sacct(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 10)
    submit(plan, executor="slurm")  # job 100, tasks 0..9
    trials = [plan / "trials" / t for t in ids]
    (trials[0] / "result.json").write_text(FINISHED)
    for i, reason in [(4, "OUT_OF_MEMORY"), (5, "TIMEOUT"), (6, "NODE_FAIL"), (7, "exit code 3")]:
        (trials[i] / "log.txt").write_text("".join(f"line {n}\n" for n in range(30)) + f"dying of {reason}\n")
    (trials[9] / "state.json").write_text(json.dumps({"state": "preempted", "reason": "SIGUSR2", "restart_count": 2}))
    stubs.set("squeue.txt", "100_1|RUNNING|None\n100_2|PENDING|Priority\n100_9|PENDING|BeginTime\n")
    stubs.set("sacct.txt", "100_0|COMPLETED|0:0\n100_3|CANCELLED by 0|0:15\n100_4|OUT_OF_MEMORY|0:125\n"
                           "100_5|TIMEOUT|0:0\n100_6|NODE_FAIL|0:0\n100_7|FAILED|3:0\n100_8|PREEMPTED|0:0\n")
    report = plan_status(plan)
    assert len(stubs.calls("squeue")) == 1 and len(stubs.calls("sacct")) == 1
    assert "--jobs=100" in stubs.calls("sacct")[0]
    got = [(t.state, t.reason) for t in report.trials]
    assert got == [("finished", ""), ("running", ""), ("pending", "Priority"), ("cancelled", "CANCELLED"),
                   ("failed", "OUT_OF_MEMORY"), ("failed", "TIMEOUT"), ("failed", "NODE_FAIL"),
                   ("failed", "exit code 3"), ("failed", "PREEMPTED"), ("pending", "BeginTime")]
    assert report.trials[4].log_tail[-1] == "dying of OUT_OF_MEMORY" and len(report.trials[4].log_tail) == 10
    assert report.trials[9].restart_count == 2
    assert report.counts == {"finished": 1, "running": 1, "pending": 2, "failed": 5, "cancelled": 1}
    assert report.accounting and report.scheduler


def test_status_degrades_without_accounting(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 4)
    submit(plan, executor="slurm")
    stubs.set("sacct.off", "")
    stubs.set("squeue.txt", "100_1|RUNNING|None\n")
    (plan / "trials" / ids[0] / "result.json").write_text(FINISHED)
    (plan / "trials" / ids[2] / "state.json").write_text(json.dumps({"state": "failed", "reason": "CUDA error"}))
    (plan / "trials" / ids[3] / "state.json").write_text(json.dumps({"state": "running"}))
    report = plan_status(plan)
    assert not report.accounting and any("accounting" in n for n in report.notes)
    assert [(t.state, t.reason) for t in report.trials] == [
        ("finished", ""), ("running", ""), ("failed", "CUDA error"),
        ("failed", "stopped while running (no accounting record)")]


def test_unsubmitted_and_local_trials_need_no_scheduler(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue at all
    plan = tmp_path / "plan"
    make_plan(plan, 2)
    report = plan_status(plan)
    assert report.counts == {"unsubmitted": 2} and not report.scheduler


def test_cli_status_text_and_json(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 3)
    submit(plan, executor="slurm")
    (plan / "trials" / ids[1] / "log.txt").write_text("step 1\nRuntimeError: boom\n")
    stubs.set("sacct.txt", "100_0|COMPLETED|0:0\n100_1|FAILED|1:0\n100_2|TIMEOUT|0:0\n")
    (plan / "trials" / ids[0] / "result.json").write_text(FINISHED)
    proc = subprocess.run([sys.executable, "-m", "finetune", "status", str(plan)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "3 trials: finished 1, failed 2" in proc.stdout
    assert f"{ids[1]} failed [exit code 1] job 100_1" in proc.stdout and "| RuntimeError: boom" in proc.stdout
    assert f"{ids[2]} failed [TIMEOUT]" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "finetune", "status", str(plan), "--json"], capture_output=True,
                          text=True)
    data = json.loads(proc.stdout)
    assert data["counts"] == {"finished": 1, "failed": 2} and data["trials"][2]["reason"] == "TIMEOUT"
    missing = subprocess.run([sys.executable, "-m", "finetune", "status", str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "plan.json" in missing.stderr


def test_an_unreachable_scheduler_makes_slurm_trials_unknown_not_cancelled(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 3)
    submit(plan, executor="slurm")
    (stubs.dir / "squeue").write_text("#!/bin/bash\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1\n")
    stubs.set("sacct.off", "")
    (plan / "trials" / ids[0] / "result.json").write_text(FINISHED)
    (plan / "trials" / ids[1] / "state.json").write_text(json.dumps({"state": "running"}))
    report = plan_status(plan)
    assert not report.scheduler and any(n.startswith("slurm: queue unavailable (squeue failed") for n in report.notes)
    assert [t.state for t in report.trials] == ["finished", "unknown", "unknown"]
    assert report.trials[1].reason.startswith("scheduler unreachable")


def test_an_unreadable_result_is_not_finished_so_a_rerun_redoes_it(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 2)
    (plan / "trials" / ids[0] / "result.json").write_text('{"state": "finis')  # cut off
    (plan / "trials" / ids[1] / "result.json").write_text(FINISHED)
    report = plan_status(plan)
    assert [(t.state, t.reason) for t in report.trials] == [
        ("failed", "result.json unreadable or not finished"), ("finished", "")]
    again = submit(plan, executor="slurm")
    assert again.submitted == [ids[0]] and again.finished == [ids[1]]
