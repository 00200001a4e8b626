"""The real trainer as a SLURM array task, interrupted with SIGUSR2 mid-training, requeued and resumed.

Real parts throughout: the planner (config layers + ``--set`` overrides, as the demo builds them),
a tiny pretrained nanoGPT (``finetune.compute.pretrain``), the SIB-200 data in data/sib200 (in the repository),
``finetune submit`` to the single-node test cluster (scripts/slurm-cluster.sh) with the default
template, and ``scancel --signal=USR2 --batch`` at a random training step. The batch script
forwards the signal, the trainer checkpoints and exits 75, the script requeues the job, and the
restarted task resumes. Its final metrics, evaluation lines and weights must equal those of the
same trial run uninterrupted (``python -m finetune train`` on a copy of the trial directory, with
the job's one CPU thread).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import waiting  # noqa: E402
from nanogpt_fixtures import tiny_pretrained  # noqa: F401

from finetune.login.plan import build_plan, write_plan
from finetune.login.status import plan_status
from finetune.login.submit import submit

REPO = Path(__file__).resolve().parent.parent
CONFIG_FILES = ("config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json", "config/data-local.json")
# the demo's SLURM settings: one CPU, under 1 GB, so it fits the 2-CPU test cluster
SLURM = ("slurm.cpus_per_task=1", "slurm.mem=1000M", "slurm.time=00:30:00", "slurm.signal_grace_s=30")
STEPS = 150  # about 0.1 s a step on one thread: the signal lands well before the end
STEP_LINE = re.compile(rf"\] step (\d+)/{STEPS} ")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def wait_until(check: Callable[[], object], timeout: float, what: str, trial: Path) -> object:
    def log_tail() -> str:
        log = trial / "log.txt"
        return "log.txt:\n" + (log.read_text(errors="replace")[-4000:] if log.exists() else "(no log.txt)")
    return waiting.wait_until(check, timeout, what, context=log_tail)


def last_step(trial: Path) -> int:
    log = trial / "log.txt"
    steps = [int(m) for m in STEP_LINE.findall(log.read_text(errors="replace"))] if log.exists() else []
    return max(steps, default=0)


def metric_lines(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]


def weights(trial: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(trial / "model" / "model.safetensors"))


def plan_trial(plan_dir: Path, models: Path, cache: Path) -> str:
    """One trial (normal model, train and eval on polish + russian) from the real planner."""
    files = [str(REPO / f) for f in CONFIG_FILES]
    overrides = [*SLURM,
                 f"checkpoints.prefix={models}", "checkpoints.normal=tiny",
                 f"tokenizers.prefix={models}", "tokenizers.normal_prefix=tiny",
                 f"data.cache_dir={cache}",
                 f"hyperparameters.max_steps={STEPS}", "hyperparameters.batch_size=16",
                 "hyperparameters.learning_rate=1e-3",
                 "training.eval_interval=10", "training.checkpoint_interval=25", "training.max_eval_samples=32",
                 "training.device=cpu", "training.log_interval=1"]
    plan = build_plan(files, overrides, model_types=("normal",))
    assert len(plan.trials) == 1
    write_plan(plan, plan_dir)
    return plan.trials[0].id


def test_trainer_usr2_on_slurm_requeues_and_resumes_to_the_uninterrupted_result(
        slurm_cluster, tiny_pretrained, sib200_dir, tmp_path):  # noqa: F811
    ckpt, prefix = tiny_pretrained
    assert ckpt == prefix / "ckpt.pt"  # <prefix>/<name>/ckpt.pt and <prefix>/<name>-vocab.json
    plan = tmp_path / "plan"
    tid = plan_trial(plan, prefix.parent, tmp_path / "cache")
    trial = plan / "trials" / tid
    report = submit(plan, executor="slurm")
    assert report.executor == "slurm" and report.submitted == [tid]
    job = report.job_ids[0]

    # interrupt at a random point of training, once the first evaluations are written
    at = random.randint(12, 40)
    wait_until(lambda: last_step(trial) >= at, 240, f"training step {at}", trial)
    sig = subprocess.run(["scancel", "--signal=USR2", "--batch", f"{job}_0"], capture_output=True, text=True)
    assert sig.returncode == 0, sig.stderr

    # the uninterrupted reference: the same frozen trial config in a copy of the trial dir, run the
    # way every executor runs a trial, with the job's one thread (SLURM_CPUS_PER_TASK=1 there)
    ref = tmp_path / "reference" / tid
    ref.mkdir(parents=True)
    shutil.copy(trial / "config.json", ref / "config.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CPUS_PER_TASK"] = "1"
    reference = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(ref)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # result.json comes first, then the batch script's last line as the job ends
    wait_until(lambda: (trial / "result.json").is_file() and "exited with" in (trial / "log.txt").read_text(),
               300, "the requeued job to finish", trial)
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out[-4000:]

    # (a) finished after one requeue, with the restart recorded
    log = (trial / "log.txt").read_text(errors="replace")
    assert "USR2: asking trial" in log and "requeueing job" in log and "exited with 0" in log, log[-4000:]
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert len(resumed) == 1 and at <= resumed[0] < STEPS, (at, resumed)  # preempted mid-training
    assert "restart 1 on" in log
    state = json.loads((trial / "state.json").read_text())
    result = json.loads((trial / "result.json").read_text())
    assert state["state"] == "finished" and state["restart_count"] == 1
    assert result["state"] == "finished" and result["restart_count"] == 1 and result["steps"] == STEPS
    assert plan_status(plan).trials[0].restart_count == 1
    assert not (trial / "checkpoints").exists()

    # (c) one evaluation line per step and language: nothing written twice across the restart
    lines = metric_lines(trial)
    keys = [(x["step"], x["language"]) for x in lines]
    assert len(keys) == len(set(keys))
    assert sorted({x["step"] for x in lines}) == list(range(10, STEPS + 1, 10))

    # (b) the same run as without the interruption: metrics, evaluation lines and weights
    expected = json.loads((ref / "result.json").read_text())
    assert expected["restart_count"] == 0 and result["best_step"] == expected["best_step"]
    for lang, splits in expected["metrics"].items():
        for split, values in splits.items():
            for key, value in values.items():
                assert result["metrics"][lang][split][key] == pytest.approx(value, abs=1e-6, rel=0), (lang, split, key)
    ref_lines = metric_lines(ref)
    assert keys == [(x["step"], x["language"]) for x in ref_lines]
    for x, y in zip(lines, ref_lines, strict=True):
        for key in ("loss", "accuracy", "macro_f1", "train_loss", "lr"):
            assert x[key] == pytest.approx(y[key], abs=1e-6, rel=0), (x["step"], x["language"], key)
    import torch

    got, want = weights(trial), weights(ref)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key  # bit-exact, as the direct resume tests require
