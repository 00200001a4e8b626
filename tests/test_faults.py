"""Issue 14 without a cluster: kills, signals and foreign files never give a trial two writers,
a lost requeue or a wrong result (random moments drawn with fixed seeds)."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from finetune.analysis.results import collect
from finetune.login.status import plan_status

sys.path.insert(0, str(Path(__file__).parent))
import waiting  # noqa: E402
from submit_helpers import make_plan  # noqa: E402

REPO = str(Path(__file__).resolve().parent.parent)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO}


def trial_processes(trial: Path) -> list[int]:
    """Our own processes whose command line names ``trial`` (the trial processes)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(trial).encode() in cmd and b"train" in cmd:
                out.append(int(pid))
    return out


def wait_for(check, timeout: float = 30.0):
    return waiting.wait_until(check, timeout, every=0.02)


def test_killed_local_submitter_takes_its_trials_with_it(tmp_path):
    rng = random.Random(142)
    for attempt, sig in enumerate([signal.SIGKILL, signal.SIGTERM]):
        plan = tmp_path / f"plan{attempt}"
        tid = make_plan(plan, 1, count_to=40, count_sleep_s=0.05)[0]
        trial = plan / "trials" / tid
        proc = subprocess.Popen([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", "local"],
                                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: (trial / "checkpoints" / "count.json").exists())  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(sig)
        proc.wait()
        wait_for(lambda: not trial_processes(trial), timeout=5)  # noqa: B023 - the child died with it
        again = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", "local"],
                               env=env(), capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        result = json.loads((trial / "result.json").read_text())
        assert result["count"] == 40 and len(result["runs"]) == 2
        lines = (trial / "log.txt").read_text().splitlines()
        counts = [line for line in lines if line.startswith("count: finished")]
        assert counts == ["count: finished at 40"]


def test_a_trial_held_by_another_process_is_not_started_twice(tmp_path):
    plan = tmp_path / "plan"
    tid = make_plan(plan, 1, count_to=3)[0]
    trial = plan / "trials" / tid
    with open(trial / ".trial.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = subprocess.run([sys.executable, "-m", "finetune", "train", str(trial)], env=env(),
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "another process is running this trial" in proc.stderr
    assert not (trial / "state.json").exists() and not (trial / "checkpoints").exists()
    assert subprocess.run([sys.executable, "-m", "finetune", "train", str(trial)], env=env(),
                          timeout=60).returncode == 0


def test_a_result_of_another_trial_is_invalid_in_status_and_collect(tmp_path):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 2, count_to=2)
    for tid in ids[:1]:
        assert subprocess.run([sys.executable, "-m", "finetune", "train", str(plan / "trials" / tid)],
                              env=env(), timeout=60).returncode == 0
    shutil.copy(plan / "trials" / ids[0] / "result.json", plan / "trials" / ids[1] / "result.json")
    report = plan_status(plan)
    states = {t.trial_id: (t.state, t.reason) for t in report.trials}
    assert states[ids[0]][0] == "finished"
    assert states[ids[1]][0] == "invalid" and f"not this trial ({ids[1]})" in states[ids[1]][1]
    assert report.counts == {"finished": 1, "invalid": 1}
    rows = {r.trial_id: r for r in collect(plan).rows}
    assert rows[ids[1]].state == "invalid" and ids[0] in rows[ids[1]].reason and rows[ids[1]].metrics == {}
    # and submit runs it again
    again = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", "local"],
                           env=env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads((plan / "trials" / ids[1] / "result.json").read_text())["trial"] == ids[1]


def test_usr2_at_any_moment_of_a_local_trial_ends_in_an_exact_resume(tmp_path):
    rng = random.Random(144)
    plan = tmp_path / "plan"
    tid = make_plan(plan, 1, count_to=200, count_sleep_s=0.02)[0]  # 4 s of counting: at least 3 USR2 (each within 1.2 s of a start) land before the end
    trial = plan / "trials" / tid
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "submit", str(plan), "--executor", "local"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sent = 0
    while proc.poll() is None and sent < 6:  # each run of the trial gets USR2 at a random moment
        pids = trial_processes(trial)
        if not pids:
            time.sleep(0.005)
            continue
        time.sleep(rng.uniform(0.0, 1.2))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGUSR2)
            except ProcessLookupError:
                pass
        sent += 1
        wait_for(lambda: set(trial_processes(trial)).isdisjoint(pids) or proc.poll() is not None)  # noqa: B023
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert sent >= 3
    result = json.loads((trial / "result.json").read_text())
    assert result["count"] == 200
    starts = [r["start"] for r in result["runs"]]
    assert starts == sorted(starts)  # every run resumed where the last one stopped
    assert (trial / "log.txt").read_text().count("local run of") >= 2  # USR2 led to runs again


def _plan_record_edit(plan: Path, edit) -> None:
    data = json.loads((plan / "plan.json").read_text())
    edit(data["trials"])
    (plan / "plan.json").write_text(json.dumps(data))


def test_hand_edited_plan_json_is_refused_before_anything_is_written(tmp_path, capsys):
    from finetune.cli import main

    cases = {
        "escape": (lambda t: t[0].update(id="../../evil"), "$.trials[0].id", "not a trial id"),
        "duplicate": (lambda t: t[1].update(id=t[0]["id"]), "$.trials[1].id", "appears twice"),
        "learning_rate": (lambda t: t[0]["hyperparameters"].update(learning_rate="fast"),
                          "$.trials[0].hyperparameters.learning_rate", "number"),
        "model_type": (lambda t: t[0].pop("model_type"), "$.trials[0].model_type", "missing"),
        "seed": (lambda t: t[0]["hyperparameters"].update(seed=2 ** 70), "$.trials[0].hyperparameters.seed", ""),
        "batch_size": (lambda t: t[0]["hyperparameters"].update(batch_size=1e23),
                       "$.trials[0].hyperparameters.batch_size", ""),
    }
    for name, (edit, path, words) in cases.items():
        plan = tmp_path / name
        make_plan(plan, 2)
        _plan_record_edit(plan, edit)
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        for args in (["submit", str(plan), "--executor", "local"], ["status", str(plan)],
                     ["submit", str(plan), "--executor", "local", "--dry-run"]):
            assert main(args) == 2, (name, args)
            err = capsys.readouterr().err
            assert str(plan / "plan.json") in err and path in err and words in err, (name, err)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, name
        assert not (tmp_path.parent / "evil").exists()


def test_a_huge_grid_is_refused_from_its_counts_before_expanding(tmp_path, capsys, monkeypatch):
    from finetune.cli import main
    from finetune.login import grid as grid_module

    def no_expansion(grid):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(grid_module, "expand", no_expansion)
    big = {"parameters": {"learning_rate": [1e-5 * (i + 1) for i in range(1000)],
                          "batch_size": list(range(1, 1001)), "seed": list(range(1000))}}  # 10**9 points
    medium = {"parameters": {"learning_rate": [1e-5 * (i + 1) for i in range(30)], "seed": list(range(30))},
              "exclude": [{"seed": [0, 1]}]}  # 900 - 60 >= 840 > 500
    for name, grid, args, words in [("big", big, ["--yes"], "at most"), ("big", big, ["--dry-run"], "at most"),
                                    ("medium", medium, [], "at least 840 trials")]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(grid))
        code = main(["plan", f"{REPO}/config/finetune-rus-pol.json", f"{REPO}/config/finetune-rus-pol-topic.json",
                     "--grid-config", str(path), "--output-dir", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err
        assert code == 2 and words in err, err
        assert not (tmp_path / "out").exists()


def test_the_grid_count_is_a_lower_bound_of_the_expansion():
    from finetune.login.grid import Grid, excluded, expand, min_count

    rng = random.Random(146)
    for _ in range(200):
        params = {f"p{i}": list(range(rng.randint(1, 4))) for i in range(rng.randint(1, 4))}
        rules = [{k: rng.sample(v, rng.randint(1, len(v))) for k, v in params.items() if rng.random() < 0.5}
                 for _ in range(rng.randint(0, 3))]
        rules = [r for r in rules if r]
        grid = Grid(parameters=params, exclude=rules)
        kept = [p for p in expand(grid) if not excluded(p, "normal", rules)]
        assert min_count(grid) <= len(kept)
        if not rules:
            assert min_count(grid) == len(kept)


CONFIGS = [f"{REPO}/config/finetune-rus-pol.json", f"{REPO}/config/finetune-rus-pol-topic.json"]


def test_hostile_config_values_exit_2_with_file_and_json_path(tmp_path, capsys):
    from finetune.cli import main

    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    (tmp_path / "deep.json").write_text('{"a": ' + "[" * 5000 + "]" * 5000 + "}")
    (tmp_path / "nan.json").write_text('{"hyperparameters": {"learning_rate": NaN}}')
    (tmp_path / "grid.json").write_text('{"parameters": {"learning_rate": [Infinity, 1e-3]}}')
    cases = [([str(tmp_path / "loop.json")], "loop.json: cannot read"),
             ([str(tmp_path / "deep.json")], "deep.json: nested too deeply"),
             ([str(tmp_path / "nan.json")], "nan.json: $.hyperparameters.learning_rate: nan is not a number"),
             (["--grid-config", str(tmp_path / "grid.json")], "grid.json: $.parameters.learning_rate[0]: inf"),
             (["--set", "hyperparameters.learning_rate=NaN"], "--set: $.hyperparameters.learning_rate: nan"),
             (["--set", "hyperparameters.seed=1180591620717411303424"], "$.hyperparameters.seed"),
             (["--set", "hyperparameters.batch_size=1e23"], "$.hyperparameters.batch_size")]
    for extra, words in cases:
        code = main(["plan", *CONFIGS, *extra, "--no-submit", "--output-dir", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and words in err, (extra, err)
        assert not (tmp_path / "out").exists()


def test_a_damaged_manifest_exits_2_naming_the_entry(tmp_path, capsys):
    from finetune.cli import main

    plan = tmp_path / "plan"
    ids = make_plan(plan, 2)
    (plan / "manifest.json").write_text(json.dumps({"version": 1, "submissions": [
        {"job_id": "7", "array_index": 0, "trial_id": ids[0], "executor": "local"},
        {"job_id": "7", "array_index": 1, "executor": "local"}]}))
    for args in (["status", str(plan)], ["submit", str(plan), "--executor", "local"], ["cancel", str(plan)]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "manifest.json: $.submissions[1].trial_id: missing" in err, err


def test_an_unwritable_plan_folder_exits_2_naming_it(tmp_path):
    """As an unprivileged user (root writes anywhere): plan, submit, submit --dry-run, collect."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ft-ro-", dir="/tmp"))  # pytest's tmp is root-only
    try:
        os.chmod(root, 0o755)
        plan = root / "plan"
        make_plan(plan, 2)
        for p in [plan, *plan.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        e = {**env(), "HOME": str(root), "MPLCONFIGDIR": str(root)}
        runs = [["plan", *CONFIGS, "--no-submit", "--output-dir", str(plan)],
                ["submit", str(plan), "--executor", "local"],
                ["submit", str(plan), "--executor", "local", "--dry-run"],
                ["collect", str(plan)]]
        for args in runs:
            proc = subprocess.run([*nobody, sys.executable, "-m", "finetune", *args], env=e, capture_output=True,
                                  text=True, timeout=120)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
            assert str(plan) in proc.stderr, (args, proc.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_messages_slurm_down_garbage_restart_count_malformed_result(tmp_path, monkeypatch, capsys):
    from submit_helpers import SlurmStubs

    from finetune.cli import main
    from finetune.login.submit import submit

    stubs = SlurmStubs(tmp_path)
    monkeypatch.setenv("PATH", f"{stubs.dir}:{os.environ['PATH']}")
    plan = tmp_path / "plan"
    ids = make_plan(plan, 3)
    submit(plan, executor="slurm")
    (stubs.dir / "squeue").write_text("#!/bin/bash\necho 'squeue: error: slurmctld down' >&2; exit 1\n")
    (stubs.dir / "sacct.off").write_text("")
    (plan / "trials" / ids[1] / "state.json").write_text(json.dumps({"state": "preempted", "restart_count": "lots"}))
    assert main(["status", str(plan), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"unknown": 3}  # not {}: the queue could not say
    assert all(t["restart_count"] is None for t in report["trials"])
    assert main(["status", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "unknown 3" in out and "lots" not in out
    # a result.json that is not an object: collect says what is wrong
    (plan / "trials" / ids[0] / "result.json").write_text("null")
    (plan / "trials" / ids[0] / "state.json").write_text(json.dumps({"state": "finished"}))
    rows = {r.trial_id: r for r in collect(plan).rows}
    assert rows[ids[0]].state == "invalid" and "not a result (a JSON object), but NoneType" in rows[ids[0]].reason


def test_an_empty_config_of_an_unfinished_trial_is_written_again(tmp_path):
    from finetune.login.plan import build_plan, materialize_trials, write_plan
    from finetune.login.submit import submit

    plan_dir = tmp_path / "plan"
    write_plan(build_plan(CONFIGS, ["training.workload=count", "training.count_to=1"]), plan_dir)
    materialize_trials(plan_dir)
    trials = sorted((plan_dir / "trials").iterdir())
    (trials[0] / "config.json").write_text("")
    report = submit(plan_dir, executor="local", parallel=2)
    assert sorted(report.submitted) == sorted(t.name for t in trials)
    assert json.loads((trials[0] / "config.json").read_text())["id"] == trials[0].name
    assert json.loads((trials[0] / "result.json").read_text())["state"] == "finished"


def test_duplicate_keys_in_a_config_are_reported_with_line_and_key(tmp_path, capsys):
    from finetune.cli import main

    (tmp_path / "dup.json").write_text('{\n "hyperparameters": {"learning_rate": 1e-3,\n   "learning_rate": 2e-3}\n}\n')
    (tmp_path / "dup5.json").write_text('// c\n{\n "hyperparameters": {learning_rate: 1e-3,\n "learning_rate": 2e-3,}\n}\n')
    for name, line in (("dup.json", 3), ("dup5.json", 4)):
        code = main(["plan", *CONFIGS, str(tmp_path / name), "--no-submit", "--output-dir", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and f"{name}: line {line}: key 'learning_rate' appears twice" in err, err
