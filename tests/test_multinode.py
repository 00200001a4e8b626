"""Trials that span two nodes of the real 2-node test cluster (``slurm_multinode``).

Real parts throughout: the planner (config layers + ``--set`` overrides), a tiny pretrained
nanoGPT, SIB-200 data, ``finetune submit`` with the default template to a cluster whose two
slurmd live in their own network namespaces (ftnode1, ftnode2). The ranks start through ``srun``
(rank, world size and master address from SLURM) or through one torchrun per node (c10d
rendezvous), talk gloo over the bridge, and must end where one process ends: the same
evaluations, metrics and weights (no dropout; within 1e-6). The same trials interrupted with
SIGUSR2 at a random step (``scancel --signal=USR2 --batch``: the batch script forwards it to srun,
srun to every rank on both nodes, or to each node's torchrun, which forwards it to its workers)
checkpoint at one agreed step, exit 75, requeue and resume bit-exact.

All jobs of the module are submitted at once (``two_node_runs``) and then checked by the tests.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer import metric_lines, same_run

from finetune.login.plan import build_plan, write_plan
from finetune.login.submit import submit

REPO = Path(__file__).resolve().parent.parent
CONFIG_FILES = ("config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json", "config/data-local.json")
STEPS = 40  # a few seconds of training: the signal lands mid-training
STEP_LINE = re.compile(rf"\] step (\d+)/{STEPS} ")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1200)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def plan_trial(plan_dir: Path, models: Path, cache: Path, *, strategy: str, launcher: str = "srun",
               nodes: int = 2, per_node: int = 1, extra: tuple[str, ...] = ()) -> str:
    """One trial (normal model, polish + russian) on ``nodes`` x ``per_node`` ranks of one CPU.

    Global batch 16 in micro batches of 8: two ranks take one each, one process accumulates both."""
    ids = plan_trials(plan_dir, models, cache, strategy=strategy, launcher=launcher, nodes=nodes,
                      per_node=per_node, extra=extra)
    assert len(ids) == 1
    return ids[0]


def plan_trials(plan_dir: Path, models: Path, cache: Path, *, strategy: str, launcher: str = "srun",
                nodes: int = 2, per_node: int = 1, extra: tuple[str, ...] = (), grid: Path | None = None) -> list[str]:
    """``plan_trial``'s trials, one per point of ``grid`` (a grid config file) when given."""
    overrides = ["slurm.cpus_per_task=1", "slurm.mem=900M", "slurm.time=00:20:00", "slurm.signal_grace_s=30",
                 f"slurm.nodes={nodes}", f"slurm.ntasks_per_node={per_node}", f"slurm.launcher={launcher}",
                 f"checkpoints.prefix={models}", "checkpoints.normal=tiny",
                 f"tokenizers.prefix={models}", "tokenizers.normal_prefix=tiny", f"data.cache_dir={cache}",
                 f"hyperparameters.max_steps={STEPS}", "hyperparameters.batch_size=16",
                 "hyperparameters.micro_batch_size=8", "hyperparameters.dropout=0.0",
                 "hyperparameters.learning_rate=1e-3", f"training.strategy={strategy}",
                 "training.eval_interval=10", "training.checkpoint_interval=100", "training.max_eval_samples=32",
                 "training.device=cpu", "training.log_interval=1", *extra]
    plan = build_plan([str(REPO / f) for f in CONFIG_FILES], overrides, model_types=("normal",),
                      grid_config=str(grid) if grid else None)
    write_plan(plan, plan_dir)
    return [t.id for t in plan.trials]


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


def last_step(trial: Path) -> int:
    log = trial / "log.txt"
    return max((int(m) for m in STEP_LINE.findall(log.read_text(errors="replace"))), default=0) if log.exists() else 0


# name -> (strategy, launcher, interrupted)
RUNS = {"ddp": ("ddp", "srun", False), "fsdp": ("fsdp", "srun", False),
        "ddp-usr2": ("ddp", "srun", True), "fsdp-usr2": ("fsdp", "srun", True),
        "torchrun-usr2": ("ddp", "torchrun", True)}


@pytest.fixture(scope="module")
def two_node_runs(_slurm_multinode_session, tiny_pretrained, sib200_dir, tmp_path_factory):  # noqa: F811
    """Every 2-node job of this module and the 1-process reference, run to the end.

    The interrupted ones go first (the cluster runs two such jobs at a time); each gets SIGUSR2
    once, when its log shows a random training step."""
    _, prefix = tiny_pretrained
    root = tmp_path_factory.mktemp("multinode")
    out: dict[str, dict] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(_slurm_multinode_session / "etc" / "slurm.conf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        for name in sorted(RUNS, key=lambda n: not RUNS[n][2]):
            strategy, launcher, interrupted = RUNS[name]
            plan = root / name
            tid = plan_trial(plan, prefix.parent, root / "cache", strategy=strategy, launcher=launcher)
            report = submit(plan, executor="slurm")
            assert report.submitted == [tid]
            out[name] = {"trial": plan / "trials" / tid, "job": report.job_ids[0],
                         "at": random.randint(3, 15) if interrupted else None}
        # strategy and launcher are not part of the trial id: one reference serves every run
        assert len({r["trial"].name for r in out.values()}) == 1
        # the array task writes the frozen config.json when its job starts: the first one will do
        # (the runs differ only in their slurm and training.strategy settings, a one-process run ignores both)
        end = time.monotonic() + 600
        while not (configs := [r["trial"] / "config.json" for r in out.values() if (r["trial"] / "config.json").is_file()]):
            assert time.monotonic() < end, "no job of the module started within 600 s"
            time.sleep(0.5)
        reference = one_process_reference(configs[0], root / "reference")
        signalled: set[str] = set()
        end = time.monotonic() + 840
        while time.monotonic() < end and not all(job_ended(r["trial"]) for r in out.values()):
            for name, r in out.items():
                if r["at"] is not None and name not in signalled and last_step(r["trial"]) >= r["at"]:
                    sig = subprocess.run(["scancel", "--signal=USR2", "--batch", f"{r['job']}_0"],
                                         capture_output=True, text=True)
                    assert sig.returncode == 0, sig.stderr
                    signalled.add(name)
            time.sleep(0.2)
        wait_all([r["trial"] for r in out.values()], 1)
        stdout, _ = reference.communicate(timeout=600)
        assert reference.returncode == 0, stdout[-4000:]
    out["reference"] = {"trial": root / "reference" / out["ddp"]["trial"].name}
    return out


def check_two_nodes(run: dict, strategy: str) -> str:
    trial, job = run["trial"], run["job"]
    log = (trial / "log.txt").read_text(errors="replace")
    assert "exited with 0" in log, log[-4000:]
    assert re.search(r"2 nodes \(ftnode\[1-2\]\), rendezvous at ftnode1:\d+", log), log[-4000:]
    assert f"{strategy} on 2 x cpu" in log, log[-4000:]
    result = json.loads((trial / "result.json").read_text())
    assert (result["world_size"], result["strategy"], result["steps"]) == (2, strategy, STEPS)
    # the ranks' step ran on both nodes (for torchrun: one agent per node)
    assert step_nodes(job).get(f"{job}_0.0") == "ftnode[1-2]", step_nodes(job)
    return log


def test_two_node_ddp_and_fsdp_trials_equal_one_process(two_node_runs, slurm_multinode):
    ref = two_node_runs["reference"]["trial"]
    assert json.loads((ref / "result.json").read_text())["world_size"] == 1
    for name in ("ddp", "fsdp"):
        check_two_nodes(two_node_runs[name], RUNS[name][0])
        same_run(ref, two_node_runs[name]["trial"], atol=1e-6)


@pytest.mark.parametrize("name", ["ddp-usr2", "fsdp-usr2", "torchrun-usr2"])
def test_usr2_on_both_nodes_checkpoints_requeues_and_resumes_bit_exact(two_node_runs, slurm_multinode, name):
    strategy, launcher, _ = RUNS[name]
    run = two_node_runs[name]
    trial, at = run["trial"], run["at"]
    log = check_two_nodes(run, strategy)
    assert "USR2: asking trial" in log and "requeueing job" in log and "restart 1 on ftnode1" in log, log[-4000:]
    if launcher == "torchrun":  # each node's torchrun passed the signal on to its worker
        assert "SIGUSR2 forwarded to the workers on ftnode1" in log, log[-4000:]
        assert "SIGUSR2 forwarded to the workers on ftnode2" in log, log[-4000:]
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert len(resumed) == 1 and at <= resumed[0] < STEPS, (at, resumed)
    state = json.loads((trial / "state.json").read_text())
    result = json.loads((trial / "result.json").read_text())
    assert state["state"] == "finished" and state["restart_count"] == 1 and result["restart_count"] == 1
    keys = [(x["step"], x["language"]) for x in metric_lines(trial)]
    assert len(keys) == len(set(keys))  # nothing evaluated twice across the restart
    # bit-exact: the same 2-rank run without the interruption (torchrun's ranks do DDP's sums)
    same_run(two_node_runs[strategy]["trial"], trial, atol=0)
    same_run(two_node_runs["reference"]["trial"], trial, atol=1e-6)


def test_sharded_evaluation_on_two_nodes_equals_unsharded(slurm_multinode, tiny_pretrained, tmp_path):  # noqa: F811
    """Each rank predicts its share of the evaluation batches; the gathered logits and metrics are
    exactly those of every rank predicting everything (plain model and FSDP2, lockstep)."""
    ckpt, _ = tiny_pretrained
    out = tmp_path / "out"
    proc = subprocess.run(["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10",
                           sys.executable, str(REPO / "tests" / "sharded_eval_check.py"), str(ckpt), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["host"]) for r in reports] == [(0, 2, "ftnode1"), (1, 2, "ftnode2")]
    assert sum(r["computed"] for r in reports) == reports[0]["rows"] and all(r["computed"] < r["rows"] for r in reports)
    for r in reports:
        assert r["equal"] and r["equal_fsdp"] and r["metrics_equal"] and r["fsdp_matches_plain"], r


# --- a node lost mid-trial ------------------------------------------------------------------------


def wait_until(check, timeout: float, what: str, trials: tuple[Path, ...] = ()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    logs = "\n".join(f"--- {t}/log.txt\n" + (t / "log.txt").read_text(errors="replace")[-3000:]
                     for t in trials if (t / "log.txt").exists())
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def latest_step(trial: Path) -> int | None:
    """The step of the checkpoint latest.json names (the last one every rank finished writing)."""
    try:
        return json.loads((trial / "checkpoints" / "latest.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


RUN_HEADER = re.compile(r"^== \S+ job \S+ task \d+ trial ", re.M)


def runs_ended(trial: Path, runs: int) -> bool:
    """The trial's log shows ``runs`` starts of its job (array task) and the last one ended."""
    log = trial / "log.txt"
    text = log.read_text(errors="replace") if log.exists() else ""
    starts = [m.start() for m in RUN_HEADER.finditer(text)]
    return len(starts) >= runs and "exited with" in text[starts[-1]:]


def cluster(*args: str) -> None:
    from conftest import SLURM_CLUSTER

    proc = subprocess.run(["bash", str(SLURM_CLUSTER), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def in_service(node: str) -> bool:
    """slurmctld has the node up and responding (what start-node waits for before it returns)."""
    show = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True).stdout
    state = re.search(r"\bState=(\S+)", show)
    return state is not None and not re.search(r"DOWN|NOT_RESPONDING|UNKNOWN", state.group(1))


def kill_node_mid_training(c: Path, trial: Path, what: str) -> None:
    """Once ``trial`` has a checkpoint at a random step, ftnode2 is lost (every process in its
    namespace, slurmd included, SIGKILLed); SLURM notices after SlurmdTimeout."""
    at = random.randint(5, 15)
    wait_until(lambda: (latest_step(trial) or 0) >= at, 300, f"{what}: a checkpoint at step {at} or later", (trial,))
    assert not runs_ended(trial, 1), "the trial ended before the node could be lost"
    cluster("kill-node", str(c), "2")


def finetune_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def node_failure_runs(_slurm_multinode_session, tiny_pretrained, tmp_path_factory):  # noqa: F811
    """ftnode2 is lost twice, each time mid-trial; every job is then run to the end.

    1. ``requeue``: a 2-node DDP trial (``#SBATCH --requeue``, as the shipped template says): SLURM
       ends the run with NODE_FAIL and queues the job again itself. It is held while 2. runs, then
       released with its start time set to now (SLURM's own 120 s BeginTime is not waited out),
       so it starts the moment ftnode2 is back the second time, on the node that has just come
       back (where the last session's srun step once waited forever: "Requested nodes are busy").
    2. ``no-requeue``: a plan of two such trials (learning rates 2e-3 and 1e-3, one at a time,
       ``--throttle 1``) whose job SLURM must not requeue (``scontrol update Requeue=0``, what
       ``--no-requeue`` sets): the first ends normally, the second loses ftnode2 mid-training,
       ends NODE_FAIL and stays failed; ``finetune submit`` again sends that trial alone.

    Returns what each test checks: plan, trial, job, the checkpoint step saved before the loss
    and what ``finetune status``/``submit`` said on the way.
    """
    from finetune.login.status import plan_status

    c = _slurm_multinode_session
    _, prefix = tiny_pretrained
    root = tmp_path_factory.mktemp("node-failure")
    out: dict[str, dict] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(c / "etc" / "slurm.conf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        every = ("training.checkpoint_interval=5",)
        # 1. SLURM requeues
        plan = root / "requeue"
        tid = plan_trial(plan, prefix.parent, root / "cache", strategy="ddp", extra=every)
        job = submit(plan, executor="slurm").job_ids[0]
        trial = plan / "trials" / tid
        r = out["requeue"] = {"plan": plan, "trial": trial, "job": job}
        try:
            kill_node_mid_training(c, trial, "requeue")
            status = wait_until(lambda: (t := plan_status(plan).trials[0]).state == "pending"
                                and "NODE_FAIL" in t.reason and t, 180, "NODE_FAIL and SLURM's requeue", (trial,))
            subprocess.run(["scontrol", "hold", f"{job}_0"], check=True, capture_output=True)
            r["reason"] = status.reason
            r["status_cli"] = finetune_cli("status", str(plan))
            again = submit(plan, executor="slurm")  # queued already: nothing twice
            r["again"] = (again.submitted, again.active)
            r["saved"] = latest_step(trial)
            # what a save the failure cut short leaves: a step folder latest.json does not name
            half = trial / "checkpoints" / f"step-{STEPS - 1:08d}"
            half.mkdir()
            (half / "rank0.pt").write_bytes(b"half-written")
        finally:
            cluster("start-node", str(c), "2")  # returns once slurmctld has the node back in service
        assert in_service("ftnode2")

        # 2. SLURM does not requeue; finetune submit does
        plan = root / "no-requeue"
        grid = root / "grid.json"
        grid.write_text(json.dumps({"parameters": {"learning_rate": [2e-3, 1e-3]}}))
        first, tid = plan_trials(plan, prefix.parent, root / "cache", strategy="ddp", extra=every, grid=grid)
        report = submit(plan, executor="slurm", throttle=1)
        job = report.job_ids[0]
        subprocess.run(["scontrol", "update", f"jobid={job}", "Requeue=0"], check=True, capture_output=True)
        trial = plan / "trials" / tid
        n = out["no-requeue"] = {"plan": plan, "trial": trial, "first": plan / "trials" / first, "job": job}
        try:
            wait_until(lambda: (n["first"] / "result.json").is_file(), 300, "the first trial to finish", (n["first"],))
            kill_node_mid_training(c, trial, "no-requeue")
            wait_until(lambda: plan_status(plan).counts.get("failed"), 180, "NODE_FAIL", (trial,))
            n["status"] = {t.trial_id: (t.state, t.reason) for t in plan_status(plan).trials}
            n["status_cli"] = finetune_cli("status", str(plan))
            n["saved"] = latest_step(trial)
        finally:
            cluster("start-node", str(c), "2")  # returns once slurmctld has the node back in service
        assert in_service("ftnode2")
        held = f"{out['requeue']['job']}_0"
        subprocess.run(["scontrol", "release", held], check=True, capture_output=True)
        subprocess.run(["scontrol", "update", f"jobid={held}", "StartTime=now"], check=True, capture_output=True)
        n["submit_cli"] = finetune_cli("submit", str(plan))
        n["resubmit"] = json.loads((plan / "manifest.json").read_text())["submissions"][-1]
        for t in (out["requeue"]["trial"], trial):
            wait_until(lambda t=t: runs_ended(t, 2), 400, "the second run to end", (t,))
    return out


def accounting(job: str, task: int = 0) -> list[str]:
    """sacct: the state of every run of the job's array task, oldest first."""
    return subprocess.run(["sacct", "-j", f"{job}_{task}", "--duplicates", "-X", "-n", "-P", "-o", "State"],
                          capture_output=True, text=True, check=True).stdout.split()


def test_a_node_lost_mid_trial_slurm_requeues_and_the_trial_resumes_bit_exact(two_node_runs, node_failure_runs,
                                                                                slurm_multinode):
    """SLURM's own requeue after NODE_FAIL: status says why the trial waits, submit does not queue it
    twice, and the restarted job (on the node that came back) resumes from the last checkpoint
    every rank finished (not the half-written folder after it) and ends where a run that never
    lost a node ends, bit for bit."""
    r = node_failure_runs["requeue"]
    trial, tid = r["trial"], r["trial"].name
    assert r["reason"].startswith("requeued by SLURM after NODE_FAIL on ftnode[1-2]"), r["reason"]
    assert f"{tid} pending [requeued by SLURM after NODE_FAIL on ftnode[1-2]" in r["status_cli"], r["status_cli"]
    assert r["again"] == ([], [tid])
    log = (trial / "log.txt").read_text(errors="replace")
    assert "restart 1 on ftnode1" in log and log.rstrip().endswith(f"trial {tid} exited with 0"), log[-4000:]
    assert r["saved"] is not None and r["saved"] >= 5
    assert re.findall(r"resumed from \S+ at step (\d+)", log) == [str(r["saved"])], log[-4000:]
    assert accounting(r["job"]) == ["NODE_FAIL", "COMPLETED"]
    assert json.loads((trial / "state.json").read_text())["restart_count"] == 1
    assert step_nodes(r["job"]).get(f"{r['job']}_0.0") == "ftnode[1-2]"
    # the same as the run that never lost a node (another checkpoint interval, the same computation)
    same_run(two_node_runs["ddp"]["trial"], trial, atol=0)


def test_a_node_lost_without_slurm_requeue_submit_requeues_only_that_trial(two_node_runs, node_failure_runs,
                                                                          slurm_multinode):
    """A job SLURM does not requeue: the trial it ran is failed with NODE_FAIL; `finetune submit`
    sends that trial alone (the other trial of the plan finished) as a new job, which resumes it
    from its checkpoint and ends bit-exact."""
    n = node_failure_runs["no-requeue"]
    trial, tid, first = n["trial"], n["trial"].name, n["first"].name
    assert n["status"] == {first: ("finished", ""), tid: ("failed", "NODE_FAIL")}, n["status"]
    assert f"{tid} failed [NODE_FAIL]" in n["status_cli"] and first not in n["status_cli"], n["status_cli"]
    assert "submitted 1 trials in 1 arrays" in n["submit_cli"] and "skipped 1 finished" in n["submit_cli"], n["submit_cli"]
    assert n["resubmit"]["trial_id"] == tid and str(n["resubmit"]["job_id"]) != n["job"]
    assert accounting(n["job"]) == ["COMPLETED"]  # task 0: the first trial
    assert accounting(n["job"], 1) == ["NODE_FAIL"]  # task 1: SLURM did not run it again
    assert accounting(str(n["resubmit"]["job_id"])) == ["COMPLETED"]
    log = (trial / "log.txt").read_text(errors="replace")
    assert log.rstrip().endswith(f"trial {tid} exited with 0"), log[-4000:]
    assert n["saved"] is not None and n["saved"] >= 5
    assert re.findall(r"resumed from \S+ at step (\d+)", log) == [str(n["saved"])], log[-4000:]
    assert json.loads((n["first"] / "result.json").read_text())["steps"] == STEPS
    same_run(two_node_runs["ddp"]["trial"], trial, atol=0)
