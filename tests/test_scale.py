"""Plans at scale: submit writes O(arrays) files; the array task freezes its trial when it starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from submit_helpers import SlurmStubs

from finetune import layout
from finetune.login.plan import build_plan, load_plan, write_plan
from finetune.login.submit import submit

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["finetune-rus-pol.json", "finetune-rus-pol-topic.json", "data-local.json"]
COUNT = ["training.workload=count", "training.count_to=2", "training.count_sleep_s=0", "slurm.cpus_per_task=1"]


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    s = SlurmStubs(tmp_path)
    monkeypatch.setenv("PATH", f"{s.dir}:{os.environ['PATH']}")
    return s


def _layers(tmp_path: Path) -> Path:
    """The repository's layers (and the database they name) copied where a test may edit them."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    for name in [*LAYERS, "language-database.json"]:
        shutil.copy(REPO / "config" / name, cfg / name)
    return cfg


def _grid(tmp_path: Path, rates: int, seeds: int) -> Path:
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": [1e-4 * (i + 1) for i in range(rates)],
                                               "seed": list(range(seeds)), "batch_size": 16}}))
    return grid


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(root) for f in fs]


def test_a_dry_run_of_10000_trials_writes_fewer_than_100_files(tmp_path):
    cfg = _layers(tmp_path)
    plan = build_plan([str(cfg / n) for n in LAYERS], COUNT, grid_config=str(_grid(tmp_path, 100, 100)),
                      model_types=("normal",))
    assert len(plan.trials) == 10_000
    out = tmp_path / "plan"
    write_plan(plan, out)
    report = submit(out, executor="slurm", dry_run=True, max_array_size=1000)
    assert len(report.arrays) == 10 and sum(len(j.trial_ids) for j in report.arrays) == 10_000
    files = _files(out)
    assert len(files) < 100, sorted(str(f.relative_to(out)) for f in files)
    assert not layout.trials_dir(out).exists()  # the array tasks make the trial folders
    # the index lines carry each trial's record, so the task needs nothing else from plan.json
    first = report.arrays[0].index_path.read_text().splitlines()[0].split("\t")
    assert first[0] == plan.trials[0].id and json.loads(first[1])["id"] == plan.trials[0].id


def test_layer_edits_after_submit_change_nothing_a_queued_trial_runs(tmp_path, stubs):
    cfg = _layers(tmp_path)
    ops = cfg / "ops.json"  # a layer of operational settings: editing it keeps the trial id
    ops.write_text(json.dumps({"slurm": {"mem": "1G"}, "training": {"count_sleep_s": 0}}))
    layers = [*(str(cfg / n) for n in LAYERS), str(ops)]
    out = tmp_path / "plan"
    write_plan(build_plan(layers, COUNT[:2], model_types=("normal",)), out)
    (tid,) = [t.id for t in load_plan(out).trials]
    submitted = load_plan(out).trial_config(tid)
    report = submit(out, executor="slurm")
    assert report.submitted == [tid] and not layout.trials_dir(out).exists()  # nothing per trial at submit

    # Edit the layer, plan again into the same folder (plan.json now says otherwise), then delete
    # every layer: the queued trial must not notice.
    ops.write_text(json.dumps({"slurm": {"mem": "7G"}, "training": {"count_sleep_s": 0.001}}))
    replanned = build_plan(layers, COUNT[:2], model_types=("normal",))
    assert [t.id for t in replanned.trials] == [tid]
    write_plan(replanned, out)
    assert load_plan(out).trial_config(tid)["slurm"]["mem"] == "7G"
    for layer in cfg.iterdir():
        layer.unlink()

    (job,) = report.arrays
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "finetune", "array-task", str(job.index_path), "--task-id", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    trial = layout.trial_dir(out, tid)
    assert proc.returncode == 0, proc.stderr + layout.log_file(trial).read_text()
    frozen = json.loads(layout.config_file(trial).read_text())
    assert frozen == json.loads(json.dumps(submitted))  # exactly what plan.json said at submit
    assert frozen["slurm"]["mem"] == "1G" and frozen["training"]["count_sleep_s"] == 0
    assert layout.is_finished(trial) and json.loads(layout.result_file(trial).read_text())["count"] == 2


def test_status_and_collect_understand_trials_without_a_folder(tmp_path, stubs):
    from finetune.analysis.results import collect
    from finetune.login.status import plan_status

    cfg = _layers(tmp_path)
    out = tmp_path / "plan"
    write_plan(build_plan([str(cfg / n) for n in LAYERS], COUNT, grid_config=str(_grid(tmp_path, 2, 3)),
                          model_types=("normal",)), out)
    ids = [t.id for t in load_plan(out).trials]
    (job,) = submit(out, executor="slurm").arrays
    # one trial ran (its folder made by the array task), the others are still queued, folder-less
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "finetune", "array-task", str(job.index_path), "--task-id", "0"],
                   env=env, check=True, timeout=120)
    stubs.set("squeue.txt", "".join(f"100_{i}|PENDING|Priority\n" for i in range(1, 5)))
    before = sorted(map(str, _files(out)))

    report = plan_status(out)
    states = {t.trial_id: t.state for t in report.trials}
    assert states[ids[0]] == "finished"
    assert [states[i] for i in ids[1:5]] == ["pending"] * 4 and states[ids[5]] == "cancelled"
    assert stubs.calls("squeue") and len(stubs.calls("squeue")) == 1 and len(stubs.calls("sacct")) == 1

    table = collect(out, metric="loss")
    rows = {r.trial_id: r for r in table.rows}
    assert rows[ids[0]].state == "finished" and all(rows[i].state == "missing" for i in ids[1:])
    assert sorted(map(str, _files(out))) == before  # reading wrote nothing, made no folder
    assert sorted(p.name for p in layout.trials_dir(out).iterdir()) == [ids[0]]


def _bundle_plan(tmp_path: Path, trials: int, per_task: int, count_to: int, sleep_s: float) -> tuple[Path, list[str]]:
    cfg = _layers(tmp_path)
    out = tmp_path / "plan"
    overrides = ["training.workload=count", f"training.count_to={count_to}", f"training.count_sleep_s={sleep_s}",
                 "slurm.cpus_per_task=1", f"slurm.trials_per_task={per_task}"]
    write_plan(build_plan([str(cfg / n) for n in LAYERS], overrides, grid_config=str(_grid(tmp_path, 1, trials)),
                          model_types=("normal",)), out)
    return out, [t.id for t in load_plan(out).trials]


def _count_at(trial: Path) -> int:
    try:
        return json.loads((layout.checkpoints_dir(trial) / "count.json").read_text())["count"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_bundle_resumes_at_the_trial_and_step_where_usr2_stopped_it(tmp_path, stubs):
    import signal
    import time

    out, ids = _bundle_plan(tmp_path, 3, 3, count_to=40, sleep_s=0.05)
    report = submit(out, executor="slurm")
    (job,) = report.arrays
    assert job.per_task == 3 and job.array_spec == "0-0" and "--array=0-0" in stubs.calls("sbatch")[0]
    assert {e["array_index"] for e in json.loads(layout.manifest_file(out).read_text())["submissions"]} == {0}
    assert "--per-task 3" in job.script
    trials = [layout.trial_dir(out, t) for t in ids]
    argv = [sys.executable, "-m", "finetune", "array-task", str(job.index_path), "--task-id", "0", "--per-task", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _count_at(trials[1]) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR2)  # in the middle of the bundle's second trial
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == layout.EXIT_REQUEUE, output
    assert layout.is_finished(trials[0]) and not layout.is_finished(trials[1]) and not trials[2].exists()
    stopped_at = _count_at(trials[1])
    assert 5 <= stopped_at < 40
    first = layout.result_file(trials[0]).read_bytes()

    proc = subprocess.run(argv, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert layout.result_file(trials[0]).read_bytes() == first  # not run again
    assert f"{ids[0]} already done; skipped" in proc.stdout
    second = json.loads(layout.result_file(trials[1]).read_text())
    assert second["count"] == 40 and [r["start"] for r in second["runs"]] == [0, stopped_at]  # resumed exactly
    assert [r["restart_count"] for r in second["runs"]] == [0, 1]
    assert layout.is_finished(trials[2])
    assert "count: finished at 40" in layout.log_file(trials[1]).read_text()  # each trial logs to its own file


def test_bundles_run_on_the_local_executor(tmp_path):
    out, ids = _bundle_plan(tmp_path, 5, 2, count_to=2, sleep_s=0)
    report = submit(out, executor="local", parallel=2)
    (job,) = report.arrays
    assert job.tasks == 3 and report.submitted == ids
    assert all(layout.is_finished(layout.trial_dir(out, t)) for t in ids)
    assert len(list(layout.job_logs_dir(out).glob("*.out"))) == 3  # one process per array task
    assert submit(out, executor="local").submitted == []


def test_bundles_need_single_task_jobs(tmp_path):
    from finetune.errors import ConfigError

    out, _ = _bundle_plan(tmp_path, 2, 2, count_to=2, sleep_s=0)
    plan = load_plan(out)
    for group in plan.groups.values():
        group["config"]["slurm"]["nodes"] = 2
    from finetune.login.plan_file import PLAN_VERSION, dump

    layout.plan_file(out).write_text(dump(PLAN_VERSION, plan.sources, plan.groups, plan.trials))
    with pytest.raises(ConfigError, match=r"\$\.slurm\.trials_per_task"):
        submit(out, executor="slurm", dry_run=True, max_array_size=10)


def test_slurm_max_queued_caps_what_is_queued_and_a_rerun_tops_up(tmp_path, stubs):
    from submit_helpers import make_plan

    stubs.set("sacctmgr", "#!/bin/bash\necho \"sacctmgr $*\" >> " + str(stubs.dir / "calls.log") + "\n")
    (stubs.dir / "sacctmgr").chmod(0o755)
    plan = tmp_path / "plan"
    ids = make_plan(plan, 5, slurm={"max_queued": 2})
    report = submit(plan, executor="slurm")
    assert report.submitted == ids[:2] and report.deferred == ids[2:] and report.queue_limit == 2
    assert "--array=0-1" in stubs.calls("sbatch")[0] and "left for later" in report.summary()
    assert [e["trial_id"] for e in json.loads(layout.manifest_file(plan).read_text())["submissions"]] == ids[:2]

    stubs.set("squeue.txt", "100_0|PENDING|None\n100_1|PENDING|None\n")  # both still queued: no room
    again = submit(plan, executor="slurm")
    assert again.submitted == [] and again.deferred == ids[2:] and sorted(again.active) == sorted(ids[:2])
    assert len(stubs.calls("sbatch")) == 1

    stubs.set("squeue.txt", "100_1|RUNNING|None\n")  # one left the queue (finished): room for one more
    (layout.trial_dir(plan, ids[0]) / "result.json").write_text(json.dumps({"state": "finished"}))
    third = submit(plan, executor="slurm")
    assert third.submitted == ids[2:3] and third.deferred == ids[3:]


def test_status_shows_the_trials_a_running_bundle_has_not_started_as_waiting(tmp_path, stubs):
    from finetune.login.status import plan_status

    out, ids = _bundle_plan(tmp_path, 6, 3, count_to=2, sleep_s=0)
    (job,) = submit(out, executor="slurm").arrays
    assert job.tasks == 2
    # task 0 runs: its first trial finished, the second runs now, the third has not started; a
    # trial of it preempted before (requeued task) waits its turn too; task 1 is still queued
    done, now, later = (layout.trial_dir(out, t) for t in ids[:3])
    for d in (done, now):
        d.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({"state": "finished", "trial": ids[0]}))
    layout.write_state(now, "running")
    stubs.set("squeue.txt", "100_0|RUNNING|None\n100_1|PENDING|Priority\n")
    states = {t.trial_id: (t.state, t.reason) for t in plan_status(out).trials}
    assert states[ids[0]][0] == "finished" and states[ids[1]] == ("running", "")
    assert states[ids[2]][0] == "pending" and "waiting in its bundle" in states[ids[2]][1]
    assert [states[i] for i in ids[3:]] == [("pending", "Priority")] * 3
    layout.write_state(now, "preempted", "USR2")  # the task was requeued and runs again: it will resume it
    later.mkdir()
    layout.write_state(later, "running")
    states = {t.trial_id: t.state for t in plan_status(out).trials}
    assert (states[ids[1]], states[ids[2]]) == ("pending", "running")


def test_collect_reads_no_file_of_a_trial_that_has_no_folder(tmp_path, monkeypatch):
    from finetune.analysis import results

    out, ids = _bundle_plan(tmp_path, 5, 1, count_to=2, sleep_s=0)
    d = layout.trial_dir(out, ids[0])
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"state": "finished", "trial": ids[0], "workload": "count"}))
    read: list[Path] = []
    real = results._try_read
    monkeypatch.setattr(results, "_try_read", lambda path: read.append(Path(path)) or real(path))
    table = results.collect(out, metric="loss")
    assert [r.state for r in table.rows] == ["finished"] + ["missing"] * 4
    assert read and {p.parent.name for p in read} == {ids[0]}  # no folder: nothing opened for the other four


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


def test_collect_opens_each_file_of_a_started_trial_once(tmp_path):
    """100k finished trials: every open costs; config.json is read once (its frozen datasets serve
    both the row and the current-score check), as is result.json; evaluations.json, absent, is
    not tried (the trial's folder is listed once)."""
    global _OPENED
    from finetune.analysis import results

    out, ids = _bundle_plan(tmp_path, 3, 1, count_to=2, sleep_s=0)
    for tid in ids[:2]:
        d = layout.trial_dir(out, tid)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"hyperparameters": {"note": "frozen"}}))
        split = {"loss": 0.5, "macro_f1": 0.5}
        (d / "result.json").write_text(json.dumps({"state": "finished", "trial": tid,
                                                   "metrics": {"polish": {"eval": split, "test": split}}}))
    sys.addaudithook(_audit)  # (an audit hook stays for the process: it records only while _OPENED is a list)
    _OPENED = []
    try:
        table = results.collect(out, metric="loss")
    finally:
        opened, _OPENED = _OPENED, None
    assert [r.state for r in table.rows] == ["finished", "finished", "missing"]
    for tid in ids[:2]:
        names = [Path(p).name for p in opened if Path(p).parent.name == tid]
        assert sorted(names) == ["config.json", "result.json"], names
    assert not [p for p in opened if ids[2] in p]
    (layout.trial_dir(out, ids[0]) / "evaluations.json").write_text("{}")  # there: read, once
    _OPENED = []
    try:
        results.collect(out, metric="loss")
    finally:
        opened, _OPENED = _OPENED, None
    names = [Path(p).name for p in opened if Path(p).parent.name == ids[0]]
    assert sorted(names) == ["config.json", "evaluations.json", "result.json"], names


def test_collect_streams_rows_to_disk_as_it_reads_them(tmp_path, monkeypatch):
    """Memory does not hold every row: when the last trial is read, the earlier rows are already
    on disk and at most one batch of rows is alive; the tables come out whole all the same."""
    import gc

    from finetune.analysis import results

    out, ids = _bundle_plan(tmp_path, 7, 1, count_to=2, sleep_s=0)
    for i, tid in enumerate(ids):
        d = layout.trial_dir(out, tid)
        d.mkdir(parents=True)
        split = {"loss": 0.5 + i / 100, "macro_f1": 0.5 - i / 100}
        (d / "result.json").write_text(json.dumps({"state": "finished", "trial": tid,
                                                   "metrics": {"polish": {"eval": split, "test": split}}}))
    monkeypatch.setattr(results.RowSpool, "BATCH", 2)
    spools: list[results.RowSpool] = []
    real_init, real_row = results.RowSpool.__init__, results._row
    monkeypatch.setattr(results.RowSpool, "__init__", lambda self: real_init(self) or spools.append(self))
    seen: dict[str, object] = {}

    def row(plan_dir, trial, **kw):
        if trial["id"] == ids[-1]:  # the last trial, before it is read
            seen["alive"] = sum(isinstance(o, results.TrialRow) for o in gc.get_objects())
            on_disk = [r.trial_id for b in range(len(spools[0]._batches)) for r in spools[0]._batch(b)]
            seen["on_disk"] = on_disk
        return real_row(plan_dir, trial, **kw)

    monkeypatch.setattr(results, "_row", row)
    table = results.collect(out, metric="loss")
    assert seen["on_disk"] == ids[:6]
    assert seen["alive"] <= 2
    assert [r.trial_id for r in table.rows] == ids and len(table.rows) == 7
    assert table.rows[-1].trial_id == ids[-1] and table.rows[3].metric("polish", "eval", "loss") == 0.53
    results.write_tables(table)
    lines = (out / "results.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ids


def _finished_plan(tmp_path: Path, rates: int, seeds: int) -> Path:
    """A plan of rates x seeds finished trials (a result.json each, scores varying by trial)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = _layers(tmp_path)
    out = tmp_path / "plan"
    plan = build_plan([str(cfg / n) for n in LAYERS], COUNT, grid_config=str(_grid(tmp_path, rates, seeds)),
                      model_types=("normal",))
    write_plan(plan, out)
    for i, t in enumerate(plan.trials):
        d = layout.trial_dir(out, t.id)
        d.mkdir(parents=True)
        split = {"loss": 1 - (i % 89) / 100, "macro_f1": (i % 97) / 100, "accuracy": (i % 83) / 100}
        (d / "result.json").write_text(json.dumps({"state": "finished", "trial": t.id,
                                                   "metrics": {lang: {"eval": split, "test": split}
                                                               for lang in t.eval_languages}}))
    return out


def _collect_traced(plan_dir: Path, peaks: list[int]):
    """collect + write_tables of a plan under tracemalloc: the table, and its peak appended to ``peaks``."""
    import tracemalloc

    from finetune.analysis import results

    tracemalloc.start()
    try:
        table = results.collect(plan_dir, metric="macro_f1")
        results.write_tables(table)
        peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    return table


def test_collect_memory_does_not_grow_with_the_trials(tmp_path, monkeypatch):
    """Flat memory: collect and write_tables of 4x the finished trials of the same two
    configurations peak (tracemalloc) within a little of the smaller plan's peak. What is still
    held a trial: the seed (a shared text) and id (an integer) of each finished trial of a
    configuration, 16 bytes a language, and the best configuration's trial ids and seeds (what
    best.csv and results.md show); no row, plan record, listing entry or score list (which were
    1.4 KB a trial here). Seeds grow with trials here (the configurations may not): the few seeds
    collect keeps at hand are capped low, so that both plans fill the cache."""

    from finetune.analysis import results
    from finetune.login import plan_stream

    monkeypatch.setattr(results.RowSpool, "BATCH", 20)  # (the spool's and the reader's batches stay
    monkeypatch.setattr(plan_stream, "_BATCH", 20)      # small, as they are small beside 100k trials)
    monkeypatch.setattr(results, "SEED_CACHE", 8)
    monkeypatch.setattr(results, "_seed_values", {})
    peaks = []
    for seeds in (100, 100, 400):  # (the first warms up: imports, caches)
        table = _collect_traced(_finished_plan(tmp_path / f"{seeds}-{len(peaks)}", 2, seeds), peaks)
        assert len(table.rows) == 2 * seeds and table.counts() == {"finished": 2 * seeds}
        assert [c.n_finished for c in table.configurations] == [seeds] * len(table.configurations)
    per_trial = (peaks[2] - peaks[1]) / (2 * 400 - 2 * 100)
    assert per_trial < 250, f"collect holds {per_trial:.0f} bytes a trial more (peaks {peaks})"


def test_running_sums_give_the_mean_of_fsum_and_the_two_pass_std():
    """A configuration's mean is math.fsum's over n to the last bit, whatever the order and the
    range of the scores (ties between configurations stay ties); the std is the two-pass one but
    for rounding; infinities and NaN as Stat.of treats them."""
    import math
    import random

    from finetune.analysis.results import Columns, Stat, _Scores, _stat

    rng = random.Random(7)
    cases = [[rng.random() for _ in range(9)], [0.1] * 7, [rng.randint(0, 100) / 100 for _ in range(12)],
             [rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(40)], [1e16, 1.0, -1e16, 3.0, 1e-300],
             [0.5], [1.0, math.inf, 2.0], [2.0, float("nan"), 4.0]]
    for values in cases:
        for order in (values, list(reversed(values))):
            columns, scores = Columns(), _Scores()
            for v in order:
                scores.add({"eval": {"m": v}}, columns)
            got = _stat([p] if (p := scores.parts(columns.get(("eval", "m")))) else [])
            want = Stat.of(v for v in values if not math.isnan(v))
            assert (got.n, got.mean) == (want.n, want.mean), values
            if want.std is None or math.isnan(want.std):
                assert got.std is want.std or (math.isnan(got.std) and math.isnan(want.std)), values
            else:
                assert got.std == pytest.approx(want.std, rel=1e-9, abs=1e-12), values  # (tables show 4 decimals)


def test_plan_json_is_read_a_line_at_a_time_and_anything_else_is_read_whole(tmp_path):
    """collect reads plan.json's trials one line at a time (the records are what json reads);
    a file laid out otherwise (edited by hand, version 1) is read whole, with the same rows."""
    from finetune.analysis import results
    from finetune.login.plan_file import records
    from finetune.login.plan_stream import NotStreamable, open_plan

    out = _finished_plan(tmp_path, 2, 3)
    path = layout.plan_file(out)
    header, lines = open_plan(str(path))
    data = json.loads(path.read_text())
    assert list(lines) == list(records(data)) and header == {k: v for k, v in data.items() if k != "trials"}
    before = results.csv_text(results.collect(out))
    path.write_text(json.dumps(data))  # one line: not as dump writes it
    with pytest.raises(NotStreamable):
        open_plan(str(path))
    assert results.csv_text(results.collect(out)) == before
    text = json.dumps(data, indent=2)
    path.write_text(text[:len(text) // 2])  # cut short: json says where
    with pytest.raises(Exception, match=r"plan.json: invalid JSON"):
        results.collect(out)


def test_collect_memory_does_not_grow_with_the_configurations(tmp_path, monkeypatch):
    """Flat memory in the configurations too: 4x the configurations (one seed each, so 4x the
    trials) peak within a little of the smaller plan's peak (tracemalloc), as collect aggregates
    them a partition at a time (partitions of about 100 trials here, as of 5000 in a real plan)
    and writes the tables from the partitions' sorted files. Holding them all cost about 2 KB
    a configuration and eval language; what still grows here is mostly the largest partition
    (12 partitions' largest is larger than 3's) and a few hundred bytes a partition."""

    from finetune.analysis import results
    from finetune.login import plan_stream

    monkeypatch.setattr(results.RowSpool, "BATCH", 20)
    monkeypatch.setattr(plan_stream, "_BATCH", 20)
    monkeypatch.setattr(results, "PARTITION_TRIALS", 100)
    monkeypatch.setattr(results._Partitions, "PENDING", 32)
    monkeypatch.setattr(results._Partitions, "BATCH", 2)
    peaks = []
    for rates in (300, 300, 1200):  # (the first warms up: imports, caches)
        table = _collect_traced(_finished_plan(tmp_path / f"{rates}-{len(peaks)}", rates, 1), peaks)
        assert len(table.rows) == rates and table.counts() == {"finished": rates}
        assert len(table.configurations) == rates * len(table.languages)
        assert table._configurations.count == (3 if rates == 300 else 12)
    per_trial = (peaks[2] - peaks[1]) / (1200 - 300)
    assert per_trial < 250, f"collect holds {per_trial:.0f} bytes a configuration more (peaks {peaks})"


def test_partitioned_collect_writes_the_same_tables(tmp_path, monkeypatch):
    """Configurations aggregated in many partitions give the four tables byte for byte as in
    one (all in memory): the same order, running sums, choices and ties (the scores repeat, so
    configurations tie), under both selection protocols; the partitions' files are gone after."""
    from finetune.analysis import results

    out = _finished_plan(tmp_path, 40, 3)
    names = ("results.csv", "results.md", "summary.csv", "best.csv")
    for selection in results.SELECTIONS:
        one = results.collect(out, metric="macro_f1", selection=selection)
        assert one._configurations.__class__ is results._Partitions and one._configurations.count == 1
        results.write_tables(one)
        want = [(out / n).read_bytes() for n in names]
        with monkeypatch.context() as m:
            m.setattr(results, "PARTITION_TRIALS", 7)
            many = results.collect(out, metric="macro_f1", selection=selection)
            assert many._configurations.count > 10 and len(many._configurations.sorted) == many._configurations.count
            results.write_tables(many)
        assert [(out / n).read_bytes() for n in names] == want, selection
        assert many.best == one.best and many.unselectable == one.unselectable
        assert [c.first_id for c in many.configurations] == [c.first_id for c in one.configurations]
        assert not any(many._configurations.files)  # the records' files, closed once aggregated
