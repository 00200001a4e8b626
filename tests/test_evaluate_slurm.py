"""Evaluation jobs on the real SLURM test cluster (issue 17 item 5): a trained trial whose layers
gain an eval language is sent by submit as an evaluation array task, and `finetune evaluate`
sends its own; both score the saved model in a SLURM job and train nothing."""

from __future__ import annotations

import json
import subprocess

import pytest
import waiting
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_evaluate import _offline, _snapshot, plan_study, study  # noqa: F401

from finetune.analysis.results import collect
from finetune.cli import main
from finetune.login import evaluations
from finetune.login.submit import submit

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]
SLURM = {"mem": "1000M", "time": "00:20:00"}


def _wait(check, what, trial):
    def tail() -> str:
        log = trial / "log.txt"
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log.txt)"
    return waiting.wait_until(check, 300, what, every=1, context=tail)


def _left_queue(job_ids):
    """The jobs are out of squeue (a finished trial's job may still be COMPLETING: then it is active)."""
    return lambda: not subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], capture_output=True,
                                      text=True).stdout.strip()


def test_evaluation_jobs_run_on_the_cluster(slurm_cluster, study, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    (tid,) = plan_study(study, out, ["russian"], ["russian"], slurm=SLURM).added
    trial = out / "trials" / tid
    first = submit(out, executor="slurm")
    assert first.submitted == [tid]
    _wait(_left_queue(first.job_ids), "training on SLURM", trial)
    result = json.loads((trial / "result.json").read_text())
    before = _snapshot(trial)

    # the layers gain Polish: submit sends the trained trial to be scored on it, as a SLURM array task
    assert plan_study(study, out, ["russian", "polish"], ["russian", "polish"], slurm=SLURM).added == []
    report = submit(out, executor="slurm")
    assert report.evaluating == [tid] and len(report.job_ids) == 1
    again = submit(out, executor="slurm")  # its evaluation job is queued (or just done): not sent twice
    assert again.submitted == [] and again.active + again.finished == [tid]
    _wait(_left_queue(report.job_ids), "the evaluation job", trial)
    assert "polish" in evaluations.current_scores(trial) and not evaluations.request_file(trial).exists()
    assert _snapshot(trial) == before and json.loads((trial / "result.json").read_text()) == result
    assert "evaluating the saved model" in (trial / "log.txt").read_text()

    # `finetune evaluate` as a job: Russian again, from the saved model (the reported numbers)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--languages", "russian", "--executor", "slurm"]) == 0
    assert "once the jobs are done" in capsys.readouterr().out
    _wait(lambda: "russian" in evaluations.read_evaluations(trial), "the `finetune evaluate` job", trial)
    scored = evaluations.read_evaluations(trial)["russian"]
    assert scored["test"] == pytest.approx(result["metrics"]["russian"]["test"], abs=1e-6)
    assert _snapshot(trial) == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["executor"] for e in manifest["submissions"]] == ["slurm"] * 3
    (row,) = collect(out).rows
    assert sorted(row.eval_languages) == ["polish", "russian"] and row.state == "finished"
