"""Bundles (slurm.trials_per_task) on the real single-node test cluster: USR2 in the middle of the
second trial of a bundle; the requeued task does not rerun the first and resumes the second exactly."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import waiting  # noqa: E402

from finetune import layout
from finetune.login.plan import build_plan, load_plan, write_plan
from finetune.login.status import plan_status
from finetune.login.submit import submit

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json", "config/data-local.json"]
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def _count_at(trial: Path) -> int:
    try:
        return json.loads((layout.checkpoints_dir(trial) / "count.json").read_text())["count"]
    except (OSError, ValueError, KeyError):
        return 0


def _wait(check, timeout: float, what: str):
    waiting.wait_until(check, timeout, what, every=0.1)


def test_usr2_in_the_second_trial_of_a_bundle(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"parameters": {"seed": [1, 2, 3]}}))
    target = 40
    overrides = ["training.workload=count", f"training.count_to={target}", "training.count_sleep_s=0.05",
                 "slurm.cpus_per_task=1", "slurm.mem=500M", "slurm.time=00:10:00", "slurm.signal_grace_s=30",
                 "slurm.trials_per_task=3"]
    out = tmp_path / "plan"
    write_plan(build_plan(LAYERS, overrides, grid_config=str(grid), model_types=("normal",)), out)
    ids = [t.id for t in load_plan(out).trials]
    trials = [layout.trial_dir(out, t) for t in ids]
    report = submit(out, executor="slurm")
    (job,) = report.job_ids
    assert report.arrays[0].array_spec == "0-0" and not layout.trials_dir(out).exists()

    at = random.randint(3, 15)
    _wait(lambda: _count_at(trials[1]) >= at, 180, f"count {at} in the second trial")
    sig = subprocess.run(["scancel", "--signal=USR2", "--batch", f"{job}_0"], capture_output=True, text=True)
    assert sig.returncode == 0, sig.stderr
    _wait(lambda: all(layout.is_finished(t) for t in trials), 180, "the requeued bundle to finish")

    first, second, third = (json.loads(layout.result_file(t).read_text()) for t in trials)
    assert [r["restart_count"] for r in first["runs"]] == [0]  # finished before the signal: not rerun
    assert [r["restart_count"] for r in second["runs"]] == [0, 1]
    assert second["count"] == target and second["runs"][1]["start"] >= at  # resumed where it stopped
    assert second["runs"][1]["start"] == _resumed_at(trials[1])
    assert [r["restart_count"] for r in third["runs"]] == [1]
    _wait(lambda: plan_status(out).counts.get("finished") == 3, 60, "status: three finished")
    logs = "".join(p.read_text() for p in layout.job_logs_dir(out).glob("*.out"))
    assert "requeueing job" in logs and f"{ids[0]} already done; skipped" in logs


def _resumed_at(trial: Path) -> int:
    """The count the second run started from, as the trial's own log says."""
    lines = [line for line in layout.log_file(trial).read_text().splitlines() if line.startswith("count: starting at")]
    return int(lines[1].split()[3])


def test_a_qos_submit_limit_caps_the_queue(slurm_cluster, tmp_path):
    import getpass
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from submit_helpers import make_plan

    def queued() -> int:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True, text=True)
        return len(out.stdout.split())

    def set_limit(value: int) -> None:
        proc = subprocess.run(["sacctmgr", "-i", "modify", "qos", "where", "name=normal", "set",
                               f"MaxSubmitJobsPerUser={value}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    subprocess.run(["scancel", "-u", getpass.getuser()], capture_output=True)
    _wait(lambda: queued() == 0, 60, "an empty queue")
    plan = tmp_path / "plan"
    ids = make_plan(plan, 7, slurm={"extra": {"hold": True}})  # held: nothing runs, the queue stays full
    set_limit(3)
    try:
        report = submit(plan, executor="slurm")
        assert report.submitted == ids[:3] and report.deferred == ids[3:] and queued() == 3
        again = submit(plan, executor="slurm")  # no room: nothing more, nothing twice
        assert again.submitted == [] and sorted(again.active) == sorted(ids[:3]) and queued() == 3
        set_limit(5)
        top_up = submit(plan, executor="slurm")
        assert top_up.submitted == ids[3:5] and top_up.deferred == ids[5:] and queued() == 5
    finally:
        set_limit(-1)
        subprocess.run(["scancel", "-u", getpass.getuser()], capture_output=True)


def test_submit_follow_tops_up_until_every_trial_is_queued(slurm_cluster, tmp_path):
    import getpass
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from submit_helpers import make_plan

    def set_limit(value: int) -> None:
        proc = subprocess.run(["sacctmgr", "-i", "modify", "qos", "where", "name=normal", "set",
                               f"MaxSubmitJobsPerUser={value}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    plan = tmp_path / "plan"
    ids = make_plan(plan, 5, count_to=2, count_sleep_s=0.01)
    set_limit(2)
    try:
        proc = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", "slurm",
                               "--follow", "--follow-interval", "1"], capture_output=True, text=True, timeout=240,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "left for later" in proc.stdout  # it had to wait at least once
        sent = [e["trial_id"] for e in json.loads(layout.manifest_file(plan).read_text())["submissions"]]
        assert sorted(sent) == sorted(ids)  # every trial queued, none twice
        _wait(lambda: plan_status(plan).counts.get("finished") == 5, 120, "five finished")
    finally:
        set_limit(-1)
        subprocess.run(["scancel", "-u", getpass.getuser()], capture_output=True)
