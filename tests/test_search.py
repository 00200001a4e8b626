"""Searches: the grid config's search block, the Optuna study it maps to, and workers on the local
executor running the count workload (its made-up macro-F1 peaks at learning rate 1e-3)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.errors import ConfigError
from finetune.login import search as S

sys.path.insert(0, str(Path(__file__).parent))
import waiting  # noqa: E402
from search_helpers import count_sets, runs, search_plan, study_trials  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def problems(tmp_path: Path, grid: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        search_plan(tmp_path, grid)
    src = str(tmp_path / "search-grid.json")
    return [f"{p.path}: {p.message}" for p in e.value.problems if p.file == src]


# ---------------------------------------------------------------------------------------------
# the block


def test_every_problem_of_a_search_block_at_once(tmp_path):
    grid = {"parameters": {"learning_rate": {"low": 1e-1, "high": 1e-5, "log": True},
                           "batch_size": {"low": 8, "high": 60, "step": 8},
                           "warmup_ratio": {"low": 0.0, "high": 0.5, "log": True},
                           "scheduler": {"low": 1, "high": 2}},
            "search": {"sampler": "random", "pruner": "median", "enqueue": [{"epochs": 2, "learning_rate": 5.0}]},
            "exclude": [{"batch_size": 8}]}
    assert problems(tmp_path, grid) == [
        "$.exclude: exclude rules cannot be searched: narrow the ranges or lists instead, or drop the search block",
        "$.exclude[0].batch_size: exclude rules may name swept parameters or model_type only",
        "$.parameters.batch_size.step: high - low (52) is not a multiple of step (8)",
        "$.parameters.learning_rate: low (0.1) must be below high (1e-05)",
        "$.parameters.scheduler: scheduler is not a number: give a list of values instead of a range",
        "$.parameters.scheduler.high: must be one of linear, cosine, constant (got 2)",
        "$.parameters.scheduler.low: must be one of linear, cosine, constant (got 1)",
        "$.parameters.warmup_ratio.low: a log range needs low > 0 (got 0.0)",
        "$.search.enqueue[0].epochs: not a searched parameter",
        "$.search.enqueue[0].learning_rate: 5.0 is not in the searched values",
        "$.search.trials: missing required key (the budget; only the grid sampler defaults to every point, this is random)",
    ]


def test_grid_sampler_needs_finite_parameters_and_a_budget_within_the_grid(tmp_path):
    grid = {"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "batch_size": [16, 32]},
            "search": {"sampler": "grid", "trials": 9}}
    assert problems(tmp_path, grid) == [
        "$.parameters.learning_rate: the grid sampler needs a list or a {low, high, step} range"]
    grid = {"parameters": {"batch_size": {"low": 8, "high": 32, "step": 8}, "scheduler": ["linear", "cosine"]},
            "search": {"sampler": "grid", "trials": 9}}
    assert problems(tmp_path, grid) == ["$.search.trials: the grid has 8 points: the grid sampler cannot run 9 trials"]


def test_a_range_without_a_search_block_is_an_error(tmp_path):
    assert problems(tmp_path, {"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}}) == [
        '$.parameters.learning_rate: a range ({low, high, ...}) is sampled by a search: add a "search" block, '
        "or give a list of values"]


def test_pruning_needs_evaluations_during_training(tmp_path):
    sets = [s for s in count_sets() if not s.startswith("training.count_eval_interval")]
    with pytest.raises(ConfigError) as e:
        search_plan(tmp_path, {"parameters": {"learning_rate": [1e-3, 1e-2]},
                               "search": {"trials": 2, "pruner": "hyperband"}}, sets)
    assert [(p.path, p.message) for p in e.value.problems] == [
        ("$.training.count_eval_interval", 'pruner \'hyperband\' needs evaluations during training (set '
         'count_eval_interval), or use pruner "none"')]


def test_the_block_resolves_to_a_spec(tmp_path):
    plan = search_plan(tmp_path, {"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
                                                 "batch_size": {"low": 8, "high": 64, "step": 8},
                                                 "warmup_ratio": [0.0, 0.1], "seed": 3},
                                  "search": {"trials": 10, "workers": 3, "metric": "loss"}},
                       model_types=("normal", "ipa"))
    spec = plan.search
    assert plan.trials == [] and spec["direction"] == "minimize" and spec["metric"] == "loss"
    assert (spec["sampler"], spec["pruner"], spec["trials"], spec["workers"]) == ("tpe", "none", 10, 3)
    assert spec["hyperparameters"]["seed"] == 3 and spec["min_resource"] == 2
    params = S.params_of(spec)
    assert list(params) == ["learning_rate", "batch_size", "warmup_ratio", "model_type"]
    assert params["batch_size"].integer and params["batch_size"].grid_values() == [8, 16, 24, 32, 40, 48, 56, 64]
    assert params["learning_rate"].log and not params["learning_rate"].integer
    assert params["model_type"].choices == ("normal", "ipa")
    # a grid sampler without a budget runs every point; the default metric is training.metric
    grid = search_plan(tmp_path, {"parameters": {"batch_size": {"low": 8, "high": 24, "step": 8},
                                                 "scheduler": ["linear", "cosine"]},
                                  "search": {"sampler": "grid"}}).search
    assert grid["trials"] == 6 and (grid["metric"], grid["direction"]) == ("macro_f1", "maximize")


def test_samplers_and_pruners_are_optunas(tmp_path):
    import optuna

    base = search_plan(tmp_path, {"parameters": {"learning_rate": [1e-3, 1e-2]}, "search": {"trials": 2}}).search
    kinds = {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler,
             "tpe": optuna.samplers.TPESampler, "qmc": optuna.samplers.QMCSampler}
    for name, cls in kinds.items():
        sampler = S.make_sampler({**base, "sampler": name}, 3)
        assert type(sampler) is cls or name == "qmc" and isinstance(sampler, cls)  # qmc: told the space
    pruners = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner}
    for name, cls in pruners.items():
        assert type(S.make_pruner({**base, "pruner": name})) is cls


def test_a_sampled_point_is_an_ordinary_trial_with_a_content_id(tmp_path):
    from search_helpers import CONFIGS

    from finetune.login.expand import searched_trial
    from finetune.login.plan import build_plan

    spec = search_plan(tmp_path, {"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}},
                                  "search": {"trials": 3}}).search
    made = searched_trial(spec, {"learning_rate": 1e-4})
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": [1e-4]}}))
    planned = build_plan(CONFIGS, count_sets(), grid_config=str(grid), model_types=("normal",)).trials
    assert [made.id] == [t.id for t in planned] and made.hyperparameters == planned[0].hyperparameters


# ---------------------------------------------------------------------------------------------
# workers on this machine


def test_local_search_spends_the_budget_exactly_and_runs_no_trial_twice(tmp_path):
    from finetune.login.search_submit import start_search
    from finetune.login.status import plan_status

    out = tmp_path / "search"
    plan = search_plan(tmp_path, {"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-1, "log": True}},
                                  "search": {"sampler": "random", "trials": 7, "workers": 3, "seed": 0,
                                             "pruner": "median", "startup_trials": 2}})
    report = start_search(plan, out, executor="local")
    trials = study_trials(out)
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs]
    assert len(done) == 7 and not [t for t in trials if t.state.name in ("RUNNING", "FAIL")]
    ids = [t.user_attrs["trial_id"] for t in done]
    assert len(set(ids)) == 7 and len({t.user_attrs["worker"] for t in done}) > 1
    planned = [t["id"] for t in json.loads((out / "plan.json").read_text())["trials"]]
    assert sorted(planned) == sorted(ids)
    for t in done:
        assert len(runs(out, t.user_attrs["trial_id"])) == 1  # each trial ran once, in one process
        cfg = json.loads((out / "trials" / t.user_attrs["trial_id"] / "config.json").read_text())
        assert cfg["hyperparameters"]["learning_rate"] == t.params["learning_rate"]
        assert cfg["search"]["number"] == t.number and cfg["grid_point"] == t.params
    status = plan_status(out).counts
    assert status.get("finished", 0) + status.get("pruned", 0) == 7 and len(status) <= 2
    assert report.counts.get("complete", 0) + report.counts.get("pruned", 0) >= 7
    assert report.failed == [] and report.worker_exits == {} and report.failures() == []
    # started again, the search has nothing left to do
    again = start_search(plan, out, executor="local")
    assert again.workers == [] and len(study_trials(out)) == len(trials)


def test_a_local_search_whose_trials_fail_exits_1_naming_them(tmp_path, capsys):
    """`finetune search --executor local`: the trials its workers told the study failed are named
    with their logs, exit 1 (a search that only pruned exits 0, above)."""
    from search_helpers import CONFIGS

    from finetune.cli import main

    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
                                "search": {"sampler": "random", "trials": 2, "workers": 1, "seed": 0}}))
    out = tmp_path / "s"
    argv = ["search", *CONFIGS, "--grid-config", str(grid), "--model-type", "normal", "-o", str(out),
            "--executor", "local"]
    for s in count_sets() + ["training.count_fail_at=1"]:
        argv += ["--set", s]
    assert main(argv) == 1
    stdout, err = capsys.readouterr()
    failed = [t.user_attrs["trial_id"] for t in study_trials(out) if t.state.name == "FAIL"]
    assert len(failed) == 2
    for tid in failed:
        assert f"  trial {tid} failed [count_fail_at=1 reached]; log: {out.resolve() / 'trials' / tid / 'log.txt'}\n" in stdout
    assert "error: 2 trials failed, 0 workers ended in error (exit 1)" in err


def test_a_bad_learning_rate_is_pruned_at_its_first_evaluation(tmp_path):
    from finetune.analysis.results import collect
    from finetune.login.search_submit import start_search
    from finetune.login.status import plan_status
    from finetune.login.submit import submit

    out = tmp_path / "search"
    plan = search_plan(tmp_path, {"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-1, "log": True}},
                                  "search": {"sampler": "tpe", "trials": 3, "workers": 1, "seed": 1,
                                             "pruner": "successive-halving",
                                             "enqueue": [{"learning_rate": 1e-3}, {"learning_rate": 1e-1}]}},
                       count_sets(count_to=8, interval=2))
    start_search(plan, out, executor="local")
    trials = study_trials(out)
    good, bad = trials[0], trials[1]
    assert good.params == {"learning_rate": 1e-3} and good.state.name == "COMPLETE"
    assert bad.params == {"learning_rate": 1e-1} and bad.state.name == "PRUNED"
    assert list(bad.intermediate_values) == [2]  # the first evaluation, and no further
    tid = bad.user_attrs["trial_id"]
    result = json.loads((out / "trials" / tid / "result.json").read_text())
    assert result["state"] == "pruned" and result["pruned_step"] == 2 and runs(out, tid)[0]["start"] == 0
    assert json.loads((out / "trials" / tid / "checkpoints" / "count.json").read_text())["count"] == 2
    by_id = {t.trial_id: t for t in plan_status(out).trials}
    assert (by_id[tid].state, by_id[tid].reason) == ("pruned", "at step 2")
    table = collect(out)
    row = {r.trial_id: r for r in table.rows}[tid]
    assert (row.state, row.pruned_step, row.reason) == ("pruned", 2, "at step 2")
    from finetune.analysis.plots import pruned_note, transfer_matrix

    steps = transfer_matrix(table, with_baselines=False).pruned["normal"][0][0]  # the heatmap cell's note
    assert 2 in steps and pruned_note(steps).startswith(f"{len(steps)} pruned at step 2")
    with pytest.raises(Exception, match="this folder is a search"):
        submit(out, executor="local")


def test_submit_does_not_rerun_a_pruned_trial(tmp_path):
    from submit_helpers import make_plan

    from finetune.login.submit import submit

    ids = make_plan(tmp_path / "plan", 2)
    (tmp_path / "plan" / "trials" / ids[0] / "result.json").write_text(json.dumps({"state": "pruned", "pruned_step": 4}))
    report = submit(tmp_path / "plan", executor="local", dry_run=True)
    assert report.finished == [ids[0]] and [t for j in report.arrays for t in j.trial_ids] == [ids[1]]


def _prepare(tmp_path: Path, trials: int, stale_after_s: float = 600, count_to: int = 40) -> Path:
    from finetune.login.search_submit import prepare

    out = tmp_path / "search"
    plan = search_plan(tmp_path, {"parameters": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                                  "search": {"sampler": "random", "trials": trials, "seed": 5,
                                             "stale_after_s": stale_after_s}},
                       count_sets(count_to=count_to, interval=10, sleep_s=0.05))
    prepare(plan, out)
    return out


def _worker(out: Path, name: str) -> subprocess.Popen:
    log = open(out / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "finetune", "search-worker", str(out), "--worker", name],
                            stdout=log, stderr=subprocess.STDOUT, env=ENV)


def _wait(check, timeout: float = 60, what: str = "") -> object:
    return waiting.wait_until(check, timeout, what, every=0.1)


def _counting(out: Path, name: str, at_least: int):
    held = S._read(S.worker_path(out, name))
    if not isinstance(held, dict) or "trial_id" not in held:
        return None
    ckpt = out / "trials" / held["trial_id"] / "checkpoints" / "count.json"
    try:
        return held if json.loads(ckpt.read_text())["count"] >= at_least else None
    except (OSError, ValueError):
        return None


def test_a_worker_stopped_with_usr2_resumes_its_trial(tmp_path):
    from finetune.login.status import plan_status

    out = _prepare(tmp_path, trials=2)
    w = _worker(out, "w0")
    held = _wait(lambda: _counting(out, "w0", 3), what="w0 counting")
    tid = held["trial_id"]
    assert [(t.trial_id, t.state) for t in plan_status(out).trials] == [(tid, "running")]
    w.send_signal(signal.SIGUSR2)
    assert w.wait(timeout=60) == 75
    assert json.loads((out / "trials" / tid / "state.json").read_text())["state"] == "preempted"
    assert [(t.trial_id, t.state) for t in plan_status(out).trials] == [(tid, "preempted")]
    spec = S.load_spec(out)
    study = S.open_study(out, spec)
    assert S.fail_stale(out, study, spec, S.tally(study).running) == []  # its process is gone, on purpose
    assert [t.state.name for t in study_trials(out)] == ["RUNNING"]
    again = _worker(out, "w0")  # the requeued task: same name
    assert again.wait(timeout=120) == 0
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]  # resumed, not sampled anew
    assert trials[0].user_attrs["trial_id"] == tid
    first, second = runs(out, tid)
    assert first["start"] == 0 and second["start"] >= 3
    assert json.loads((out / "trials" / tid / "result.json").read_text())["count"] == 40
    assert "resuming trial " + tid in (out / "w0.out").read_text()


def test_a_sigkilled_worker_does_not_stall_the_study(tmp_path):
    from finetune.login.status import plan_status

    out = _prepare(tmp_path, trials=3, count_to=20)  # stale_after_s 600: a dead local worker needs no wait
    a = _worker(out, "a")
    held = _wait(lambda: _counting(out, "a", 2), what="a counting")
    a.kill()
    a.wait()
    b = _worker(out, "b")
    assert b.wait(timeout=120) == 0
    trials = study_trials(out)
    killed = trials[held["number"]]
    assert killed.state.name == "FAIL" and "worker a died (process" in killed.user_attrs["failed_reason"]
    assert [t.state.name for t in trials].count("COMPLETE") == 3
    assert {t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"} == {"b"}
    state = json.loads((out / "trials" / held["trial_id"] / "state.json").read_text())
    assert state["state"] == "failed" and "worker a died" in state["reason"]
    assert {t.trial_id: t.state for t in plan_status(out).trials}[held["trial_id"]] == "failed"
    count = json.loads((out / "trials" / held["trial_id"] / "checkpoints" / "count.json").read_text())["count"]
    time.sleep(0.5)  # the killed worker's trial died with it (no orphan keeps counting)
    assert json.loads((out / "trials" / held["trial_id"] / "checkpoints" / "count.json").read_text())["count"] == count


def test_grid_search_script_renders_one_worker_array(tmp_path):
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
                                "search": {"trials": 12, "workers": 4, "pruner": "hyperband"}}))
    from search_helpers import CONFIGS

    argv = [sys.executable, str(REPO / "scripts" / "grid-search.py"), *CONFIGS, "--grid-config", str(grid),
            "--model-type", "normal", "-o", str(tmp_path / "s"), "--executor", "slurm", "--dry-run"]
    for s in count_sets():
        argv += ["--set", s]
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tpe sampler, hyperband pruner, budget 12 trials, 4 workers" in proc.stdout
    script = (tmp_path / "s" / "jobs" / "search-0001" / "search.sbatch").read_text()
    assert "-m finetune search-worker \"$plan_dir\" --worker \"$worker\"" in script
    assert "worker=0001-$task" in script and "#SBATCH --signal=B:USR2@5" in script
    assert (tmp_path / "s" / "jobs" / "search-0001" / "workers.index").read_text().split() == [
        "0001-0", "0001-1", "0001-2", "0001-3"]
    assert not (tmp_path / "s" / "trials").exists()


def test_a_worker_starts_a_trial_of_several_tasks_behind_the_array_tasks_launcher(tmp_path):
    """One task per trial: the worker array runs `search-worker` alone and each trial is one
    process. Several (here 2 nodes, or 2 torchrun workers on one node): the script exports the
    rendezvous as array.sbatch does and hands the worker the array task's launcher, which the
    worker execs before `python -m finetune train TRIAL_DIR` (so USR2 reaches srun)."""
    from search_helpers import CONFIGS

    from finetune.compute.search_worker import trial_command
    from finetune.login.executors.resources import resolve_slurm
    from finetune.login.submit import launcher

    def script(name: str, sets: list[str]) -> str:
        grid = tmp_path / f"{name}.json"
        grid.write_text(json.dumps({"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
                                    "search": {"trials": 4, "workers": 2}}))
        argv = [sys.executable, "-m", "finetune", "search", *CONFIGS, "--grid-config", str(grid), "--model-type",
                "normal", "-o", str(tmp_path / name), "--executor", "slurm", "--dry-run"]
        for s in count_sets() + sets:
            argv += ["--set", s]
        proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return (tmp_path / name / "jobs" / "search-0001" / "search.sbatch").read_text()

    one = script("one", [])
    assert "MASTER_ADDR" not in one and "--launcher" not in one
    two = script("two", ["slurm.nodes=2"])
    assert "--nodes=2" in two and "export MASTER_ADDR MASTER_PORT=$((29501 + SLURM_JOB_ID % 20000))" in two
    words = launcher(resolve_slurm({"nodes": 2}), sys.executable)
    assert words.startswith("srun --wait=")
    assert f'search-worker "$plan_dir" --worker "$worker" --launcher {shlex.quote(words)} &' in two
    rendered = subprocess.run(["bash", "-c", f"set -- {shlex.quote(words)}; printf %s \"$1\""], capture_output=True,
                              text=True, check=True).stdout
    assert rendered == words  # one word for the worker's --launcher, unexpanded

    trial = tmp_path / "trials" / "abc"
    python = "/opt/py/bin/python"
    plain = [python, "-m", "finetune", "train", str(trial)]
    assert trial_command(trial, "", python) == plain
    argv = trial_command(trial, words, python)
    assert argv[:2] == ["bash", "-c"] and argv[2] == f"exec {words}{python} -m finetune train {trial}"
    torchrun = launcher(resolve_slurm({"ntasks_per_node": 2, "launcher": "torchrun"}), python)
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_ID": "4242",
           "MASTER_ADDR": "node07", "MASTER_PORT": "31000", "SLURM_CPUS_PER_TASK": "2"}
    echoed = subprocess.run(["bash", "-c", trial_command(trial, torchrun, python)[2].replace("exec ", "exec echo ", 1)],
                            env=env, capture_output=True, text=True, check=True).stdout
    assert "-m finetune.compute.launch --nnodes=1 --nproc-per-node=2" in echoed
    assert "--rdzv-endpoint=node07:31000 --rdzv-id=4242" in echoed and echoed.strip().endswith(f"train {trial}")
