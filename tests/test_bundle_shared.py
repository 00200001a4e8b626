"""A bundle's trials share the loaded tokenizer, pretrained checkpoint and datasets
(finetune.compute.shared): the second trial of the same inputs loads none of them again, a
trial of other inputs does, and a trial on its own keeps nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer import make_trial, trial_config, write_sib_slice

from finetune import layout
from finetune.compute import shared


def _bundle(root: Path, configs: list[dict]) -> Path:
    """A plan folder whose index file lists ``configs``' trials (frozen by hand: id-only lines)."""
    for cfg in configs:
        make_trial(layout.trials_dir(root), cfg)
    index = root / "jobs" / "0001" / "k-0.index"
    index.parent.mkdir(parents=True)
    index.write_text("".join(f"{c['id']}\n" for c in configs))
    return index


@pytest.fixture
def counted(monkeypatch):
    """Every real load of a tokenizer, checkpoint and dataset, by kind."""
    from finetune.compute import data, model, tokenizer

    calls = {"tokenizer": 0, "checkpoint": 0, "data": 0}
    for module, name, kind in ((tokenizer, "load_tokenizer", "tokenizer"), (model, "load_checkpoint", "checkpoint"),
                               (data, "prepare_trial_data", "data")):
        real = getattr(module, name)

        def wrapper(*args, _real=real, _kind=kind, **kwargs):
            calls[_kind] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
    return calls


def test_the_second_trial_of_a_bundle_loads_nothing_again(tmp_path, tiny_pretrained, sib200_dir, counted):  # noqa: F811
    from finetune.compute.bundle import run_bundle

    ckpt, tok = tiny_pretrained
    data = write_sib_slice(tmp_path / "sib", sib200_dir)
    short = {"max_steps": 2, "epochs": 1}
    configs = [trial_config(ckpt, tok, data, tmp_path / "cache", f"{i:012x}",
                            hyperparameters={**short, "seed": i}, training={"eval_interval": 2})
               for i in range(2)]
    index = _bundle(tmp_path / "plan", configs)
    assert run_bundle(index, 0, 2) == 0
    assert all(layout.is_finished(layout.trial_dir(tmp_path / "plan", c["id"])) for c in configs)
    assert counted == {"tokenizer": 1, "checkpoint": 1, "data": 1}  # the second trial took them from the first
    assert not shared.enabled()  # the bundle is over: nothing kept
    results = [json.loads(layout.result_file(layout.trial_dir(tmp_path / "plan", c["id"])).read_text())
               for c in configs]
    assert [r["hyperparameters"]["seed"] for r in results] == [0, 1]  # each trial its own run

    # other inputs (another data folder) load again; the same files touched since too
    other = write_sib_slice(tmp_path / "sib2", sib200_dir)
    more = [trial_config(ckpt, tok, data, tmp_path / "cache", "a" * 12, hyperparameters=short),
            trial_config(ckpt, tok, other, tmp_path / "cache", "b" * 12, hyperparameters=short)]
    index = _bundle(tmp_path / "plan2", more)
    assert run_bundle(index, 0, 2) == 0
    assert counted == {"tokenizer": 2, "checkpoint": 2, "data": 3}


def test_a_trial_on_its_own_keeps_nothing(tmp_path):
    made = []
    assert not shared.enabled()
    for _ in range(2):
        shared.cached("checkpoint", ("same",), lambda: made.append(1) or len(made))
    assert len(made) == 2  # off: loaded each time, nothing held
    shared.enable()
    try:
        values = [shared.cached("checkpoint", ("same",), lambda: made.append(1) or len(made)) for _ in range(3)]
        assert values == [3, 3, 3]
        assert shared.cached("checkpoint", ("other",), lambda: "new") == "new"
        assert shared.cached("checkpoint", ("same",), lambda: "again") == "again"  # one entry per kind
    finally:
        shared.enable(False)


def test_the_files_key_changes_when_a_file_changes(tmp_path):
    import os

    (tmp_path / "tok-vocab.json").write_text("{}")
    (tmp_path / "tok-merges.txt").write_text("")
    before = shared.files_key(tmp_path / "tok")
    assert len(before[1]) == 2
    os.utime(tmp_path / "tok-merges.txt", ns=(1, 1))
    assert shared.files_key(tmp_path / "tok") != before
