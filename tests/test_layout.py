"""finetune.layout: the one "finished" rule that submit, status and collect share; state.json; names."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import layout
from finetune.analysis.results import collect
from finetune.login.status import plan_status
from finetune.login.submit import submit

sys.path.insert(0, str(Path(__file__).parent))
from submit_helpers import make_plan  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# result.json as a trial may leave it -> finished?
RESULTS = [
    (None, False),  # no file
    ('{"state": "finished", "metrics": {}}', True),
    ('{"metrics": {}}', False),  # no "state": collect counted this finished, submit ran it again
    ('{"state": "failed", "metrics": {}}', False),
    ('{"state": "finis', False),  # cut off
    ('["finished"]', False),
    ("", False),
]


def test_submit_status_and_collect_agree_on_which_trials_are_finished(tmp_path):
    plan = tmp_path / "plan"
    ids = make_plan(plan, len(RESULTS))
    for tid, (text, _) in zip(ids, RESULTS, strict=True):
        if text is not None:
            layout.result_file(layout.trial_dir(plan, tid)).write_text(text)
    expected = {tid for tid, (_, done) in zip(ids, RESULTS, strict=True) if done}

    assert {tid for tid in ids if layout.is_finished(layout.trial_dir(plan, tid))} == expected
    assert set(submit(plan, executor="local", dry_run=True).finished) == expected
    assert {t.trial_id for t in plan_status(plan).trials if t.state == "finished"} == expected
    assert {r.trial_id for r in collect(plan).rows if r.state == "finished"} == expected


def test_collect_names_a_result_that_does_not_say_finished(tmp_path):
    plan = tmp_path / "plan"
    (tid,) = make_plan(plan, 1)
    layout.result_file(layout.trial_dir(plan, tid)).write_text('{"metrics": {}}')
    (row,) = collect(plan).rows
    assert row.state == "invalid" and "result.json" in row.reason and "finished" in row.reason


def test_write_state_is_the_one_writer(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    layout.write_state(tmp_path, "preempted", "SIGUSR2", count=7)
    data = json.loads((tmp_path / "state.json").read_text())
    assert {k: data[k] for k in ("state", "reason", "restart_count", "count")} == {
        "state": "preempted", "reason": "SIGUSR2", "restart_count": 3, "count": 7}
    assert layout.read_state(tmp_path) == data
    layout.write_state(tmp_path, "running")
    assert layout.read_state(tmp_path)["reason"] == ""  # one default, a string
    monkeypatch.setenv("SLURM_RESTART_COUNT", "")
    layout.write_state(tmp_path, "failed", "x")
    assert layout.read_state(tmp_path)["restart_count"] == 0
    with pytest.raises(ValueError, match="unknown trial state"):
        layout.write_state(tmp_path, "done")


def test_read_state_of_a_broken_or_missing_file_is_empty(tmp_path):
    assert layout.read_state(tmp_path) == {}
    (tmp_path / "state.json").write_text("[1, 2]")
    assert layout.read_state(tmp_path) == {}
    (tmp_path / "state.json").write_text('{"state": "runn')
    assert layout.read_state(tmp_path) == {}


def test_paths_and_names():
    p = Path("/plans/x")
    assert layout.trial_dir(p, "abc") == p / "trials" / "abc"
    assert layout.config_file(layout.trial_dir(p, "abc")) == p / "trials" / "abc" / "config.json"
    assert layout.plan_dir_of_index(layout.batch_dir(p, "0001") / "k-0.index") == p
    assert layout.job_logs_dir(p) == p / "jobs" / "logs"
    assert layout.logits_name("abc", "polish", "eval") == "abc-polish-eval.npz"
    assert Path(layout.logits_name("abc", "polish", "eval")).match(layout.logits_glob(None, None, "eval"))


def test_the_count_workload_exits_with_the_layout_requeue_code(tmp_path):
    """The stand-in's USR2 exit is layout.EXIT_REQUEUE, the code the local executor and template requeue on."""
    plan = tmp_path / "plan"
    (tid,) = make_plan(plan, 1, count_to=1000, count_sleep_s=0.02)
    trial = layout.trial_dir(plan, tid)
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(trial)], cwd=REPO)
    deadline = time.monotonic() + 60
    while layout.read_state(trial).get("state") != "running":
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=60) == layout.EXIT_REQUEUE
    assert layout.read_state(trial)["state"] == "preempted"
