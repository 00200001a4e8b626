"""Experiment tracking: W&B (offline here) and TensorBoard get the same scalars; a requeued trial
continues the same run without logging a step twice.

The real trainer runs a tiny model; W&B writes offline runs (read back from their transaction log
with W&B's own record definitions) and TensorBoard's event files are read with TensorBoard's own
``EventAccumulator``.
"""

from __future__ import annotations

import json
import os
import signal
import struct
from collections import Counter
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer import config_for, make_trial, metric_lines, run_in_process, setup  # noqa: F401

from finetune.compute.training.tracking import TensorBoardTracker, WandbTracker, trackers_for

TRACKED = {"wandb": {"project": "tracking-test", "entity": "ipa-gpt", "mode": "offline"}, "tensorboard": True}


@pytest.fixture(autouse=True)
def wandb_home(tmp_path, monkeypatch):
    """W&B's settings, cache and artifacts under tmp; never the network."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def tracked_trial(setup, parent: str, **training):  # noqa: F811
    config = config_for(setup, "tracked", training={"log_interval": 2, **training}, **TRACKED)
    config["plan_dir"] = str(setup["root"] / parent)
    return make_trial(setup["root"] / parent / "trials", config)


# --- reading back ------------------------------------------------------------------------------------


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(run_file: Path) -> list:
    """The records of a W&B transaction log (``run-<id>.wandb``): a 7-byte header (":W&B", magic,
    version), then LevelDB-log framed records (crc32, length, type) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            chunks.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(c) for c in chunks]


def wandb_runs(trial: Path) -> list[dict]:
    """Each offline run of the trial, in order: its run record, history rows and summary."""
    runs = []
    for folder in sorted((trial / "wandb").glob("offline-run-*")):
        (run_file,) = folder.glob("run-*.wandb")
        out: dict = {"history": [], "summary": {}}
        for r in wandb_records(run_file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["run"] = r.run
                out["config"] = {i.key: json.loads(i.value_json) for i in r.run.config.update}
            elif kind == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                out["history"].append(row)
            elif kind == "summary":
                out["summary"].update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                       for i in r.summary.update})
        runs.append(out)
    return runs


def history_steps(run: dict, key: str) -> list[int]:
    return [row["_step"] for row in run["history"] if key in row]


# --- tests ----------------------------------------------------------------------------------------------


def _preempt_at(step: int):
    def hook(current: int) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGUSR2)

    return hook


def test_a_requeued_trial_continues_its_wandb_run_and_tensorboard_events(setup):  # noqa: F811
    trial = tracked_trial(setup, "requeued")
    assert run_in_process(trial, on_step=_preempt_at(6)) == 75
    assert run_in_process(trial) == 0
    result = json.loads((trial / "result.json").read_text())
    evals = metric_lines(trial)
    logged = [1, 2, 4, 6, 8, 10, 12, 14, 16]  # every log_interval (2) and the first step

    tb = tensorboard_scalars(trial / "tensorboard")
    assert [s for s, _ in tb["train/loss"]] == logged and [s for s, _ in tb["train/lr"]] == logged
    assert tb["eval/russian/macro_f1"] == [(line["step"], pytest.approx(line["macro_f1"])) for line in evals]
    assert tb["eval/russian/loss"] == [(line["step"], pytest.approx(line["loss"])) for line in evals]
    assert tb["test/russian/accuracy"] == [(16, pytest.approx(result["metrics"]["russian"]["test"]["accuracy"]))]

    first, second = wandb_runs(trial)  # one offline run per process, one W&B run id
    for run in (first, second):
        assert run["run"].run_id == first["run"].run_id and run["run"].run_id.startswith("tracked-")
        assert (run["run"].display_name, run["run"].run_group) == ("tracked", "requeued")
        assert (run["run"].project, run["run"].entity) == ("tracking-test", "ipa-gpt")
    config = first["config"]
    assert config["hyperparameters"] == json.loads((trial / "config.json").read_text())["hyperparameters"]
    assert (config["train_languages"], config["eval_languages"], config["trial"]) == (["russian"], ["russian"], "tracked")
    # no step twice: the second process starts after the step the first stopped at
    assert history_steps(first, "train/loss") == [1, 2, 4, 6]
    assert history_steps(second, "train/loss") == [8, 10, 12, 14, 16]
    assert history_steps(first, "eval/russian/macro_f1") + history_steps(second, "eval/russian/macro_f1") == [
        line["step"] for line in evals]
    losses = {row["_step"]: row["train/loss"] for run in (first, second) for row in run["history"]
              if "train/loss" in row}
    assert [(s, losses[s]) for s in logged] == [(s, pytest.approx(v)) for s, v in tb["train/loss"]]
    assert second["summary"]["test/russian/accuracy"] == pytest.approx(result["metrics"]["russian"]["test"]["accuracy"])
    assert history_steps(second, "test/russian/macro_f1") == [16]
    assert json.loads((trial / "wandb" / "last_step.json").read_text()) == {"step": 16}


def test_a_crash_after_a_checkpoint_logs_no_step_twice(setup):  # noqa: F811
    """A hard failure at step 9 (checkpointed at 5): the rerun redoes 6..8; W&B skips what it had,
    TensorBoard's reader shows each step once."""
    trial = tracked_trial(setup, "crashed", log_interval=1)

    def crash(step: int) -> None:
        if step == 9:
            raise RuntimeError("simulated node failure")

    assert run_in_process(trial, on_step=crash) == 1
    assert run_in_process(trial) == 0
    tb = tensorboard_scalars(trial / "tensorboard")
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 17))
    assert [s for s, _ in tb["eval/russian/accuracy"]] == [4, 8, 12, 16]
    runs = wandb_runs(trial)
    assert len(runs) == 2
    steps = Counter(s for run in runs for s in history_steps(run, "train/loss"))
    assert sorted(steps) == list(range(1, 17)) and set(steps.values()) == {1}
    assert history_steps(runs[1], "train/loss") == list(range(9, 17))


def test_which_trackers_a_config_asks_for(tmp_path):
    trial = tmp_path / "plan" / "trials" / "abc"

    def kinds(**config):
        return [type(t).__name__ for t in trackers_for({"id": "abc", **config}, trial)]

    assert kinds() == ["MetricsFile"]
    assert kinds(wandb={"project": None, "mode": "online"}, tensorboard=False) == ["MetricsFile"]
    assert kinds(wandb={"project": "p", "mode": "disabled"}) == ["MetricsFile"]
    assert kinds(wandb={"project": "p"}, tensorboard=True) == ["MetricsFile", "WandbTracker", "TensorBoardTracker"]
    (tb,) = [t for t in trackers_for({"id": "abc", "tensorboard": str(tmp_path / "tb")}, trial)
             if isinstance(t, TensorBoardTracker)]
    assert tb.folder == tmp_path / "tb" / "abc"  # a shared folder: one subfolder per trial
    (wb,) = [t for t in trackers_for({"id": "abc", "wandb": {"project": "p"}}, trial) if isinstance(t, WandbTracker)]
    assert wb.trial_id == "abc"


def test_online_mode_without_a_login_fails_with_what_to_do(setup, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: no network use
    config = config_for(setup, "online", wandb={"project": "p", "mode": "online"})
    trial = make_trial(setup["root"] / "online", config)
    assert run_in_process(trial) == 2
    state = json.loads((trial / "state.json").read_text())
    assert state["state"] == "failed"
    assert "$.wandb.mode: W&B run could not start in online mode" in state["reason"]
    assert "wandb login" in state["reason"] and "offline" in state["reason"]
    assert not (trial / "result.json").exists()


def test_only_rank_0_logs(setup):  # noqa: F811
    """Two DDP processes (torchrun, gloo on CPU): one W&B run and one TensorBoard event file."""
    from test_distributed import _torchrun

    config = config_for(setup, "ranks", hyperparameters={"micro_batch_size": 8, "max_steps": 2},
                        training={"strategy": "ddp", "eval_interval": 0, "checkpoint_interval": 0,
                                  "log_interval": 1}, **TRACKED)
    trial = make_trial(setup["root"] / "ranks", config)
    done = _torchrun("-m", "finetune.compute.trainer", str(trial))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((trial / "result.json").read_text())["world_size"] == 2
    (run,) = wandb_runs(trial)
    assert history_steps(run, "train/loss") == [1, 2]
    assert len(list((trial / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in tensorboard_scalars(trial / "tensorboard")["train/loss"]] == [1, 2]


def test_a_tensorboard_folder_is_resolved_like_other_paths(tmp_path, monkeypatch, config_dir):
    from finetune.login.plan import build_plan

    layer = tmp_path / "conf" / "track.json"
    layer.parent.mkdir()
    layer.write_text('{"tensorboard": "../tb", "wandb": {"project": "p", "mode": "offline"}}')
    files = [str(config_dir / "finetune-rus-pol.json"), str(config_dir / "finetune-rus-pol-topic.json"), str(layer)]
    plan = build_plan(files, model_types=["normal"])
    trial = plan.trial_config(plan.trials[0])
    assert trial["tensorboard"] == str(tmp_path / "tb") and trial["wandb"]["mode"] == "offline"
    monkeypatch.chdir(tmp_path)
    assert build_plan(files[:2], ["tensorboard=true"], model_types=["normal"]).trials[0].id == plan.trials[0].id
