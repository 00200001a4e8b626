"""Trials that span two nodes of the real 2-node test cluster (``slurm_multinode``).

Real parts throughout: the planner (config layers + ``--set`` overrides), a tiny pretrained
nanoGPT, SIB-200 data, ``finetune submit`` with the default template to a cluster whose two
slurmd live in their own network namespaces (ftnode1, ftnode2). The ranks start through ``srun``
(rank, world size and master address from SLURM) or through one torchrun per node (c10d
rendezvous), talk gloo over the bridge, and must end where one process ends: the same
evaluations, metrics and weights (no dropout; within 1e-6).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer import same_run

from finetune.login.plan import build_plan, write_plan
from finetune.login.submit import submit

REPO = Path(__file__).resolve().parent.parent
CONFIG_FILES = ("config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json", "config/data-local.json")
STEPS = 8

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def plan_trial(plan_dir: Path, models: Path, cache: Path, *, strategy: str, launcher: str = "srun",
               nodes: int = 2, per_node: int = 1, extra: tuple[str, ...] = ()) -> str:
    """One trial (normal model, polish + russian) on ``nodes`` x ``per_node`` ranks of one CPU.

    Global batch 16 in micro batches of 8: two ranks take one each, one process accumulates both."""
    overrides = ["slurm.cpus_per_task=1", "slurm.mem=900M", "slurm.time=00:20:00", "slurm.signal_grace_s=30",
                 f"slurm.nodes={nodes}", f"slurm.ntasks_per_node={per_node}", f"slurm.launcher={launcher}",
                 f"checkpoints.prefix={models}", "checkpoints.normal=tiny",
                 f"tokenizers.prefix={models}", "tokenizers.normal_prefix=tiny", f"data.cache_dir={cache}",
                 f"hyperparameters.max_steps={STEPS}", "hyperparameters.batch_size=16",
                 "hyperparameters.micro_batch_size=8", "hyperparameters.dropout=0.0",
                 "hyperparameters.learning_rate=1e-3", f"training.strategy={strategy}",
                 "training.eval_interval=4", "training.checkpoint_interval=100", "training.max_eval_samples=32",
                 "training.device=cpu", "training.log_interval=1", *extra]
    plan = build_plan([str(REPO / f) for f in CONFIG_FILES], overrides, model_types=("normal",))
    assert len(plan.trials) == 1
    write_plan(plan, plan_dir)
    return plan.trials[0].id


def job_ended(trial: Path) -> bool:
    log = trial / "log.txt"
    return log.exists() and "exited with" in log.read_text(errors="replace")


def wait_all(trials: list[Path], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(job_ended(t) for t in trials):
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {t}\n" + ((t / "log.txt").read_text(errors="replace")[-3000:]
                                    if (t / "log.txt").exists() else "(no log.txt)") for t in trials)
    raise AssertionError(f"timed out after {timeout}s waiting for the jobs; logs:\n{logs}")


def step_nodes(job: str) -> dict[str, str]:
    """sacct: step id -> the nodes it ran on."""
    out = subprocess.run(["sacct", "-j", job, "-n", "-P", "-o", "JobID,NodeList"], capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def one_process_reference(config: Path, parent: Path) -> subprocess.Popen:
    """The same frozen trial config run as one process (one CPU thread), outside SLURM."""
    ref = parent / config.parent.name
    ref.mkdir(parents=True)
    shutil.copy(config, ref / "config.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["SLURM_CPUS_PER_TASK"] = "1"
    return subprocess.Popen([sys.executable, "-m", "finetune", "train", str(ref)], env=env, cwd=parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_node_ddp_fsdp_and_torchrun_trials_equal_one_process(
        slurm_multinode, tiny_pretrained, sib200_dir, tmp_path):  # noqa: F811
    _, prefix = tiny_pretrained
    cache = tmp_path / "cache"
    runs = {"ddp": ("ddp", "srun"), "fsdp": ("fsdp", "srun"), "torchrun": ("ddp", "torchrun")}
    trials, jobs = {}, {}
    for name, (strategy, launcher) in runs.items():
        plan = tmp_path / name
        tid = plan_trial(plan, prefix.parent, cache, strategy=strategy, launcher=launcher)
        report = submit(plan, executor="slurm")
        assert report.submitted == [tid]
        trials[name], jobs[name] = plan / "trials" / tid, report.job_ids[0]
    # strategy and launcher are not part of the trial id: one reference serves all three
    assert len({t.name for t in trials.values()}) == 1
    reference = one_process_reference(trials["ddp"] / "config.json", tmp_path / "reference")

    wait_all(list(trials.values()), 600)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-4000:]
    ref = tmp_path / "reference" / trials["ddp"].name
    assert json.loads((ref / "result.json").read_text())["world_size"] == 1

    for name, trial in trials.items():
        strategy, launcher = runs[name]
        log = (trial / "log.txt").read_text(errors="replace")
        assert "exited with 0" in log, log[-4000:]
        assert re.search(r"2 nodes \(ftnode\[1-2\]\), rendezvous at ftnode1:\d+", log), log[-4000:]
        assert f"{strategy} on 2 x cpu" in log, log[-4000:]
        result = json.loads((trial / "result.json").read_text())
        assert (result["world_size"], result["strategy"], result["steps"]) == (2, strategy, STEPS)
        # the ranks' step ran on both nodes (for torchrun: one agent per node)
        assert step_nodes(jobs[name]).get(f"{jobs[name]}_0.0") == "ftnode[1-2]", step_nodes(jobs[name])
        same_run(ref, trial, atol=1e-6)
