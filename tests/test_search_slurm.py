"""A search on the real test cluster: one array of workers sharing the study in the plan folder.

Worker 0 is preempted with USR2 (its requeued task resumes the same trial), worker 1 is killed
with SIGKILL (its trial is failed once its heartbeat is stale, and the study still reaches its
budget). The count workload stands in for training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.login import search as S
from finetune.login.search_submit import start_search

sys.path.insert(0, str(Path(__file__).parent))
import waiting  # noqa: E402
from search_helpers import count_sets, runs, search_plan, study_trials  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(400)]


def wait_until(check, timeout: float = 120, what: str = "condition"):
    return waiting.wait_until(check, timeout, what, every=0.3)


def counting(out: Path, worker: str, at_least: int):
    held = S._read(S.worker_path(out, worker))
    if not isinstance(held, dict) or "trial_id" not in held:
        return None
    try:
        ckpt = json.loads((out / "trials" / held["trial_id"] / "checkpoints" / "count.json").read_text())
    except (OSError, ValueError):
        return None
    return held if ckpt["count"] >= at_least else None


def test_search_workers_on_slurm_resume_after_usr2_and_survive_a_sigkill(slurm_cluster, tmp_path):
    out = tmp_path / "search"
    plan = search_plan(tmp_path, {"parameters": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                                  "search": {"sampler": "tpe", "trials": 5, "workers": 2, "seed": 3,
                                             "pruner": "none", "stale_after_s": 3}},
                       count_sets(count_to=30, interval=10, sleep_s=0.05))
    report = start_search(plan, out, executor="slurm")
    assert report.executor == "slurm" and report.workers == ["0001-0", "0001-1"]
    job = report.job_id
    first = wait_until(lambda: counting(out, "0001-0", 3), what="worker 0 counting")
    wait_until(lambda: counting(out, "0001-1", 1), what="worker 1 counting")
    sig = subprocess.run(["scancel", "--signal=USR2", "--batch", f"{job}_0"], capture_output=True, text=True)
    assert sig.returncode == 0, sig.stderr
    wait_until(lambda: len(runs(out, first["trial_id"])) == 2, what="worker 0 to resume its trial")
    victim = wait_until(lambda: counting(out, "0001-1", 1), what="worker 1 counting")
    kill = subprocess.run(["scancel", "--signal=KILL", "--full", f"{job}_1"], capture_output=True, text=True)
    assert kill.returncode == 0, kill.stderr

    def finished() -> bool:
        t = S.tally(S.open_study(out, S.load_spec(out)))
        return t.done == 5 and not t.running

    wait_until(finished, timeout=240, what="the study to reach its budget")
    trials = study_trials(out)
    states = {t.number: t.state.name for t in trials}
    assert states[first["number"]] == "COMPLETE"
    reason = trials[victim["number"]].user_attrs["failed_reason"]
    assert states[victim["number"]] == "FAIL" and ("died" in reason or "stopped beating" in reason), reason
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 5 and len({t.user_attrs["trial_id"] for t in done}) == 5
    resumed = runs(out, first["trial_id"])
    assert [r["restart_count"] for r in resumed] == [0, 1] and resumed[1]["start"] >= 3
    result = json.loads((out / "trials" / first["trial_id"] / "result.json").read_text())
    assert result["count"] == 30 and result["state"] == "finished"
    log = (out / "search" / "workers" / "0001-0.log").read_text()
    assert "USR2: asking worker 0001-0" in log and "resuming trial " + first["trial_id"] in log
    state = json.loads((out / "trials" / victim["trial_id"] / "state.json").read_text())
    assert state["state"] == "failed"
