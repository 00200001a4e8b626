"""Submission logic against stub SLURM tools, and the local executor for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.errors import ConfigError, FinetuneError, UsageError
from finetune.login import executors
from finetune.login.executors import resolve_name
from finetune.login.executors.base import TaskState, write_job_files
from finetune.login.manifest import load as load_manifest
from finetune.login.submit import submit

sys.path.insert(0, str(Path(__file__).parent))
from submit_helpers import SlurmStubs, make_plan  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    s = SlurmStubs(tmp_path)
    monkeypatch.setenv("PATH", f"{s.dir}:{os.environ['PATH']}")
    return s


def sbatch_arrays(stubs) -> list[str]:
    return [c.split("--array=")[1].split(" ")[0] for c in stubs.calls("sbatch")]


def test_one_sbatch_per_resource_group_with_throttle(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 5, per_trial={3: {"slurm": {"cpus_per_task": 2}}, 4: {"slurm": {"cpus_per_task": 2}}})
    report = submit(plan, executor="slurm", throttle=2)
    assert report.sbatch_calls == 2 and sbatch_arrays(stubs) == ["0-2%2", "0-1%2"]
    assert all("--parsable" in c for c in stubs.calls("sbatch"))
    entries = load_manifest(plan)["submissions"]
    assert [(e["job_id"], e["array_index"], e["trial_id"]) for e in entries] == [
        ("100", 0, ids[0]), ("100", 1, ids[1]), ("100", 2, ids[2]), ("101", 0, ids[3]), ("101", 1, ids[4])]
    assert {e["executor"] for e in entries} == {"slurm"}
    for job in report.arrays:  # the index file names each array task's trial, in order
        assert job.index_path.read_text().split() == list(job.trial_ids)
        assert "--cpus-per-task=" in job.script_path.read_text()
    assert len(stubs.calls("squeue")) == 0  # nothing submitted before: no need to ask


def test_arrays_split_at_the_clusters_max_array_size(tmp_path, stubs):
    plan = tmp_path / "plan"
    make_plan(plan, 7)
    stubs.set("max_array", "3\n")
    report = submit(plan, executor="slurm")
    assert sbatch_arrays(stubs) == ["0-2", "0-2", "0-0"] and report.sbatch_calls == 3
    assert [len(j.trial_ids) for j in report.arrays] == [3, 3, 1]
    plan2 = tmp_path / "plan2"
    make_plan(plan2, 5)
    submit(plan2, executor="slurm", max_array_size=4)  # the flag overrides scontrol
    assert sbatch_arrays(stubs)[3:] == ["0-3", "0-0"]


def test_half_failed_submission_records_exactly_what_is_queued(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 6)
    stubs.set("sbatch.fail_on", "2\n")
    with pytest.raises(FinetuneError) as e:
        submit(plan, executor="slurm", max_array_size=2)
    assert "array 2 of 3" in str(e.value) and "QOSMaxSubmitJobPerUserLimit" in str(e.value)
    assert [x["trial_id"] for x in load_manifest(plan)["submissions"]] == ids[:2]
    # rerun: the first array is still queued, the failed one and the never-submitted one go now
    stubs.set("squeue.txt", "100_0|PENDING|Priority\n100_1|RUNNING|None\n")
    report = submit(plan, executor="slurm", max_array_size=2)
    assert report.active == ids[:2] and report.submitted == ids[2:]
    assert [x["trial_id"] for x in load_manifest(plan)["submissions"]] == ids
    assert len(stubs.calls("squeue")) == 1  # one call for the whole plan


def test_rerun_sends_only_unfinished_and_unqueued_trials(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 5)
    submit(plan, executor="slurm")
    (plan / "trials" / ids[0] / "result.json").write_text('{"state": "finished"}')
    stubs.set("squeue.txt", "100_1|RUNNING|None\n100_[2]|PENDING|Resources\n999_4|RUNNING|None\n")
    report = submit(plan, executor="slurm")
    assert report.finished == [ids[0]] and report.active == ids[1:3] and report.submitted == ids[3:]
    assert sbatch_arrays(stubs) == ["0-4", "0-1"]
    second = [e for e in load_manifest(plan)["submissions"] if e["job_id"] == "101"]
    assert [(e["array_index"], e["trial_id"]) for e in second] == [(0, ids[3]), (1, ids[4])]
    assert (plan / "trials" / ids[0] / "result.json").read_text() == '{"state": "finished"}'
    # everything queued or finished: nothing to do, no sbatch
    stubs.set("squeue.txt", "100_1|RUNNING|None\n100_2|PENDING|Resources\n101_0|RUNNING|None\n101_1|PENDING|None\n")
    assert submit(plan, executor="slurm").submitted == [] and len(stubs.calls("sbatch")) == 2


def test_bad_input_submits_and_writes_nothing(tmp_path, stubs):
    plan = tmp_path / "plan"
    make_plan(plan, 3, per_trial={2: {"slurm": {"time": "four hours", "cpus_per_task": 0}}})
    with pytest.raises(ConfigError) as e:
        submit(plan, executor="slurm")
    assert "$.slurm.time" in str(e.value) and "$.slurm.cpus_per_task" in str(e.value)
    with pytest.raises(UsageError, match="--timeout"):
        submit(plan, executor="slurm", timeout="soon")
    with pytest.raises(UsageError, match="--executor"):
        submit(plan, executor="pbs")
    assert stubs.calls("sbatch") == [] and not (plan / "manifest.json").exists() and not (plan / "jobs").exists()


def test_cli_submit_exit_codes_and_timeout_flag(tmp_path, stubs):
    plan = tmp_path / "plan"
    make_plan(plan, 2)
    env = {**os.environ}
    bad = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan), "--timeout", "x"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--timeout" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan), "--timeout", "30"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "submitted 2 trials in 1 arrays (slurm: 100)" in ok.stdout
    script = Path(stubs.calls("sbatch")[0].split()[-1]).read_text()
    assert "#SBATCH --time=30\n" in script
    nothing = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan)], capture_output=True,
                             text=True, env=env)
    assert nothing.returncode == 0 and "submitted 2" in nothing.stdout  # squeue (stub) is empty: not queued


def test_cancel_cancels_only_queued_tasks_in_one_call(tmp_path, stubs):
    plan = tmp_path / "plan"
    make_plan(plan, 3)
    submit(plan, executor="slurm")
    stubs.set("squeue.txt", "100_0|RUNNING|None\n100_2|PENDING|None\n555_0|RUNNING|None\n")
    proc = subprocess.run([sys.executable, "-m", "finetune", "cancel", str(plan)], capture_output=True, text=True)
    assert proc.returncode == 0 and "cancelled 2 trials" in proc.stdout
    assert stubs.calls("scancel") == ["scancel 100_0 100_2"]


def test_auto_executor(tmp_path, stubs, monkeypatch):
    assert resolve_name("auto") == "slurm"
    monkeypatch.setenv("PATH", "/usr/bin/nonexistent")
    assert resolve_name("auto") == "local"


def test_local_executor_runs_trials_through_the_trial_entry(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch: auto means local
    plan = tmp_path / "plan"
    ids = make_plan(plan, 3, count_to=4, per_trial={2: {"training": {"count_fail_at": 1}}})
    report = submit(plan, executor="auto", parallel=2)
    assert report.executor == "local" and report.submitted == ids
    for tid in ids[:2]:
        result = json.loads((plan / "trials" / tid / "result.json").read_text())
        assert result["count"] == 4 and result["state"] == "finished"
        log = (plan / "trials" / tid / "log.txt").read_text()
        assert "local run of" in log and "count: finished at 4" in log
    assert not (plan / "trials" / ids[2] / "result.json").exists()
    assert json.loads((plan / "trials" / ids[2] / "state.json").read_text())["state"] == "failed"
    assert [e["executor"] for e in load_manifest(plan)["submissions"]] == ["local"] * 3
    assert report.arrays[0].index_path.read_text().split() == ids  # same files as an array task
    assert report.failed == [ids[2]]
    again = submit(plan, executor="local")  # only the failed one runs again
    assert again.finished == ids[:2] and again.submitted == [ids[2]] and again.failed == [ids[2]]


def test_local_submit_exits_1_naming_each_failed_trial_and_its_log(tmp_path, capsys):
    """`finetune submit --executor local` after a failed trial: exit 1 (not 0, not 2), the trial
    named with state.json's reason and its log.txt; finished trials stay as they are, a rerun runs
    only the failed one, and once it finishes the exit is 0."""
    from finetune.cli import main

    plan = tmp_path / "plan"
    ids = make_plan(plan, 3, count_to=3, per_trial={1: {"training": {"count_fail_at": 2}}})
    assert main(["submit", str(plan), "--executor", "local", "--parallel", "2"]) == 1
    out, err = capsys.readouterr()
    log = plan / "trials" / ids[1] / "log.txt"
    assert f"1 of 3 trials failed:\n  {ids[1]} failed [count_fail_at=2 reached]; log: {log}\n" in out
    assert "count: failing on purpose at 2" in log.read_text()
    assert err.startswith("error: 1 trials failed (exit 1)")
    finished = {tid: (plan / "trials" / tid / "result.json").stat().st_mtime_ns for tid in (ids[0], ids[2])}

    assert main(["submit", str(plan), "--executor", "local"]) == 1  # still failing: only it ran again
    out, _ = capsys.readouterr()
    assert "ran 1 trials" in out and "skipped 2 finished" in out and f"  {ids[1]} failed" in out
    config = plan / "trials" / ids[1] / "config.json"
    fixed = json.loads(config.read_text())
    fixed["training"]["count_fail_at"] = None
    config.write_text(json.dumps(fixed))
    assert main(["submit", str(plan), "--executor", "local"]) == 0
    out, err = capsys.readouterr()
    assert "ran 1 trials" in out and "failed" not in out + err
    assert json.loads((plan / "trials" / ids[1] / "result.json").read_text())["state"] == "finished"
    assert {tid: (plan / "trials" / tid / "result.json").stat().st_mtime_ns for tid in finished} == finished


def test_count_workload_checkpoints_on_usr2_and_resumes(tmp_path):
    plan = tmp_path / "plan"
    tid = make_plan(plan, 1, count_to=150, count_sleep_s=0.01)[0]
    trial = plan / "trials" / tid
    env = {**os.environ, "SLURM_RESTART_COUNT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(trial)], env=env)
    ckpt = trial / "checkpoints" / "count.json"
    while not ckpt.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=30) == 75
    state = json.loads((trial / "state.json").read_text())
    stopped = json.loads(ckpt.read_text())["count"]
    assert state["state"] == "preempted" and state["count"] == stopped and 0 < stopped < 150
    env["SLURM_RESTART_COUNT"] = "1"
    assert subprocess.run([sys.executable, "-m", "finetune", "train", str(trial)], env=env).returncode == 0
    result = json.loads((trial / "result.json").read_text())
    assert result["count"] == 150 and result["restart_count"] == 1
    assert [r["start"] for r in result["runs"]] == [0, stopped]


def test_train_rejects_unknown_workload(tmp_path):
    plan = tmp_path / "plan"
    tid = make_plan(plan, 1, per_trial={0: {"training": {"workload": "dance"}}})[0]
    proc = subprocess.run([sys.executable, "-m", "finetune", "train", str(plan / "trials" / tid)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "$.training.workload" in proc.stderr and "dance" in proc.stderr


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(f.relative_to(folder)): (f.read_bytes(), f.stat().st_mtime_ns) for f in sorted(folder.rglob("*"))
            if f.is_file()}


@pytest.mark.parametrize("workload", ["count", "finetune"])
def test_train_and_array_task_leave_a_finished_trial_untouched(tmp_path, workload):
    plan = tmp_path / "plan"
    tid = make_plan(plan, 1, per_trial={0: {"training": {"workload": workload}}})[0]
    trial = plan / "trials" / tid
    if workload == "count":
        assert subprocess.run([sys.executable, "-m", "finetune", "train", str(trial)]).returncode == 0
    else:  # what the trainer leaves; the check comes before anything imports torch
        (trial / "result.json").write_text(json.dumps({"state": "finished", "trial": tid}) + "\n")
        (trial / "state.json").write_text('{"state": "finished"}\n')
        (trial / "log.txt").write_text("trained\n")
    before = _snapshot(trial)
    assert "result.json" in before
    time.sleep(0.01)  # a rewrite would show in the mtimes
    proc = subprocess.run([sys.executable, "-m", "finetune", "train", str(trial)], capture_output=True, text=True)
    assert proc.returncode == 0 and "already finished" in proc.stderr
    index = plan / "jobs" / "0001" / "x-0.index"
    index.parent.mkdir(parents=True)
    index.write_text(f"{tid}\n")
    proc = subprocess.run([sys.executable, "-m", "finetune", "array-task", str(index), "--task-id", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "already finished" in proc.stderr
    assert _snapshot(trial) == before  # same files, same bytes, same mtimes


def test_template_forwards_usr2_and_requeues(tmp_path):
    """The default script under bash: USR2 reaches the child, exit 75 leads to scontrol requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "scontrol $*" >> {log}\n')
    (bin_dir / "squeue").write_text("#!/bin/bash\necho PENDING\n")
    (bin_dir / "python").write_text(
        f'#!/bin/bash\ncase "$*" in *--prepare) exit 0 ;; esac\necho "python $*" >> {log}\n'
        f"trap 'echo got-usr2 >> {log}; exit 75' USR2\n"
        f"touch {tmp_path}/started\nwhile :; do sleep 0.05; done\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    plan = tmp_path / "plan"
    make_plan(plan, 1)
    job = submit(plan, executor="slurm", dry_run=True, max_array_size=5, python=str(bin_dir / "python")).arrays[0]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "4242"}
    proc = subprocess.Popen(["bash", str(job.script_path)], env=env)
    while not (tmp_path / "started").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=30) == 0
    deadline = time.time() + 10
    while "StartTime=now" not in log.read_text() and time.time() < deadline:
        time.sleep(0.1)
    lines = log.read_text().splitlines()
    assert lines[1:3] == ["got-usr2", "scontrol requeue 4242"]
    assert "scontrol update jobid=4242 StartTime=now" in lines


CONFIGS = ["config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json", "config/data-local.json"]
COUNT = ["training.workload=count", "training.count_to=2", "training.count_sleep_s=0", "slurm.cpus_per_task=1"]


def test_a_real_plan_runs_locally(tmp_path, monkeypatch):
    from finetune.login.plan import build_plan, write_plan

    monkeypatch.chdir(REPO)
    plan = build_plan(CONFIGS, COUNT, grid_config="config/grid-demo.json", model_types=("normal",))
    write_plan(plan, tmp_path / "plan")
    report = submit(tmp_path / "plan", executor="local", parallel=2)
    assert len(report.submitted) == 2 and report.submitted == [t.id for t in plan.trials]
    for tid in report.submitted:
        frozen = json.loads((tmp_path / "plan" / "trials" / tid / "config.json").read_text())
        assert frozen["id"] == tid and frozen["slurm"]["cpus_per_task"] == 1
        assert json.loads((tmp_path / "plan" / "trials" / tid / "result.json").read_text())["count"] == 2


def test_missing_checkpoints_block_submission(tmp_path, stubs, monkeypatch):
    from finetune.login.plan import build_plan, write_plan

    monkeypatch.chdir(REPO)
    plan = build_plan(CONFIGS, [f"checkpoints.prefix={tmp_path / 'no-models'}"], model_types=("normal",))
    write_plan(plan, tmp_path / "plan")
    with pytest.raises(ConfigError, match="checkpoint"):
        submit(tmp_path / "plan", executor="slurm")
    assert stubs.calls("sbatch") == [] and not (tmp_path / "plan" / "manifest.json").exists()


def test_trials_queued_on_slurm_are_not_run_locally(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 2)
    submit(plan, executor="slurm")
    stubs.set("squeue.txt", "100_0|RUNNING|None\n")
    report = submit(plan, executor="local")
    assert report.active == [ids[0]] and report.submitted == [ids[1]]
    assert not (plan / "trials" / ids[0] / "result.json").exists()


def test_ctrl_c_during_sbatch_still_records_the_queued_array(tmp_path, stubs):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 4)
    stubs.set("sbatch.sleep", "1\n")
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "submit", str(plan), "--max-array-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (stubs.dir / "sbatch.started").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # while the first sbatch runs
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert len(stubs.calls("sbatch")) == 1
    assert [e["trial_id"] for e in load_manifest(plan)["submissions"]] == ids[:2]


def test_local_trials_share_the_cores_unless_the_user_fixed_threads(monkeypatch):
    from finetune.login.executors.local import trial_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert trial_env(2)["OMP_NUM_THREADS"] == "4"
    assert trial_env(16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert trial_env(2)["OMP_NUM_THREADS"] == "3"


def test_a_dry_run_lists_missing_inputs_as_warnings(tmp_path, stubs, monkeypatch, capsys):
    from finetune.cli import main
    from finetune.login.plan import build_plan, write_plan

    monkeypatch.chdir(REPO)
    plan = build_plan(CONFIGS, [f"checkpoints.prefix={tmp_path / 'no-models'}"], model_types=("normal",))
    write_plan(plan, tmp_path / "plan")
    assert main(["submit", str(tmp_path / "plan"), "--executor", "slurm", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "no-models" in err and "checkpoint" in err
    assert stubs.calls("sbatch") == [] and not (tmp_path / "plan" / "manifest.json").exists()


def test_submit_refuses_more_trials_than_the_guard_without_yes(tmp_path, stubs):
    plan = tmp_path / "plan"
    make_plan(plan, 3)
    with pytest.raises(UsageError, match=r"--yes: 3 trials would be submitted \(more than 2\)"):
        submit(plan, executor="slurm", max_trials=2)
    assert stubs.calls("sbatch") == [] and not (plan / "manifest.json").exists()
    assert len(submit(plan, executor="slurm", max_trials=3).submitted) == 3


def test_collect_shows_finished_count_trials_as_finished(tmp_path):
    from finetune.analysis.results import collect

    plan = tmp_path / "plan"
    ids = make_plan(plan, 2)
    submit(plan, executor="local", parallel=2)
    assert [(r.trial_id, r.state) for r in collect(plan).rows] == [(i, "finished") for i in ids]


class DummyExecutor:
    """A backend written for this test only: a scheduler whose queue is a dict."""

    name = "dummy"
    scheduler = True
    queue: dict = {}
    records: dict = {}
    submitted: list = []
    cancelled: list = []

    def __init__(self, **options):
        pass

    @classmethod
    def available(cls):
        return False  # never picked by auto

    def write(self, job):
        write_job_files(job)

    def submit(self, job):
        self.submitted.append(job.trial_ids)
        return f"d{len(self.submitted)}"

    def state(self, job_ids):
        return {k: v for k, v in self.queue.items() if k.split("_")[0] in job_ids}

    def accounting(self, job_ids):
        return {k: v for k, v in self.records.items() if k.split("_")[0] in job_ids}

    def cancel(self, job_ids):
        self.cancelled.append(list(job_ids))

    def max_array_size(self):
        return 2


@pytest.fixture
def dummy(monkeypatch, tmp_path):
    monkeypatch.setattr(executors, "BACKENDS", dict(executors.BACKENDS))
    executors.register("dummy", DummyExecutor)  # the one registry line a new backend needs
    for attr in ("queue", "records"):
        monkeypatch.setattr(DummyExecutor, attr, {})
    for attr in ("submitted", "cancelled"):
        monkeypatch.setattr(DummyExecutor, attr, [])
    (tmp_path / "no-slurm").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))  # any slurm tool called would fail
    return DummyExecutor


def test_a_registered_backend_goes_through_submit_status_and_cancel(tmp_path, dummy, capsys):
    from finetune.cli import main
    from finetune.login.status import plan_status
    from finetune.login.submit import cancel

    plan = tmp_path / "plan"
    ids = make_plan(plan, 3)
    report = submit(plan, executor="dummy")
    assert report.executor == "dummy" and report.scheduler and report.submitted == ids
    assert dummy.submitted == [tuple(ids[:2]), (ids[2],)]  # split at its max_array_size
    assert [(e["executor"], e["job_id"]) for e in load_manifest(plan)["submissions"]] == [
        ("dummy", "d1"), ("dummy", "d1"), ("dummy", "d2")]

    dummy.queue.update({"d1_0": TaskState("RUNNING"), "d1_1": TaskState("PENDING", "Priority")})
    dummy.records.update({"d2_0": TaskState("OUT_OF_MEMORY", "0:125", "0:125")})
    status = plan_status(plan)
    assert [(t.state, t.reason) for t in status.trials] == [
        ("running", ""), ("pending", "Priority"), ("failed", "OUT_OF_MEMORY")]
    assert status.scheduler and status.accounting

    again = submit(plan, executor="dummy")
    assert again.active == ids[:2] and again.submitted == [ids[2]]

    assert cancel(plan).trials == sorted(ids[:2]) and dummy.cancelled == [["d1_0", "d1_1"]]

    assert main(["submit", str(plan), "--executor", "dummy", "--dry-run"]) == 0  # the CLI lists it too
    assert "dry run (dummy)" in capsys.readouterr().out


def test_auto_never_picks_an_unavailable_backend_and_unknown_names_are_refused(dummy):
    assert executors.resolve_name("auto") == "local"  # no sbatch on PATH; dummy says unavailable
    with pytest.raises(UsageError, match="unknown executor 'nope'; choose one of auto, slurm, submitit, local, dummy"):
        executors.resolve_name("nope")


@pytest.mark.parametrize("grace,expected", [(0, 0), (None, 120), (45, 45)])
def test_signal_grace_means_the_same_in_the_sbatch_script_and_in_submitit(tmp_path, grace, expected):
    from finetune.login.executors.submitit_executor import submitit_parameters

    plan = tmp_path / "plan"
    make_plan(plan, 1, slurm={"signal_grace_s": grace})
    (job,) = submit(plan, executor="slurm", dry_run=True, max_array_size=10).arrays
    assert f"#SBATCH --signal=B:USR2@{expected}\n" in job.script
    assert submitit_parameters(job)["slurm_signal_delay_s"] == expected


def test_missing_resources_take_one_set_of_defaults_everywhere(tmp_path):
    from finetune.login.executors.resources import SLURM_DEFAULTS
    from finetune.login.executors.submitit_executor import submitit_parameters

    plan = tmp_path / "plan"
    (tid,) = make_plan(plan, 1)
    frozen = plan / "trials" / tid / "config.json"
    frozen.write_text(json.dumps({**json.loads(frozen.read_text()), "slurm": {}}))  # written by hand
    (job,) = submit(plan, executor="slurm", dry_run=True, max_array_size=10).arrays
    params = submitit_parameters(job)
    assert params["cpus_per_task"] == SLURM_DEFAULTS["cpus_per_task"] == 1
    assert f"#SBATCH --cpus-per-task={params['cpus_per_task']}\n" in job.script
    assert f"#SBATCH --nodes={params['nodes']}\n" in job.script and "--gres" not in job.script
    assert f"#SBATCH --signal=B:USR2@{params['slurm_signal_delay_s']}\n" in job.script


def test_submit_checks_inputs_on_the_login_node_without_compute_imports(tmp_path):
    """A dry run of a real (training) plan lists its missing inputs, importing nothing of the compute node."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from finetune.login.plan import build_plan, write_plan
from finetune.login.submit import submit
plan = build_plan({CONFIGS!r}, ["checkpoints.prefix={tmp_path / 'no-models'}"], model_types=("normal",))
write_plan(plan, {str(tmp_path / 'plan')!r})
report = submit({str(tmp_path / 'plan')!r}, executor="local", dry_run=True)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "datasets", "matplotlib",
                                                              "submitit") or m.startswith(("finetune.compute",
                                                              "finetune.analysis")))
print(json.dumps({{"heavy": heavy, "warnings": [str(w) for w in report.warnings]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["heavy"] == []
    assert any("no-models" in w and "checkpoint" in w for w in out["warnings"])
