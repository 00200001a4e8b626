"""check_plan / prefetch / `finetune prefetch` on real plans, a tiny real checkpoint and SIB-200."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from nanogpt_fixtures import sib200_texts, write_nanogpt_checkpoint  # noqa: E402

from finetune.cli import main  # noqa: E402
from finetune.compute import ipa  # noqa: E402
from finetune.compute.prefetch import prefetch  # noqa: E402
from finetune.login.check import check_plan  # noqa: E402


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """(ckpt.pt, tokenizer prefix): a real byte-level BPE and a random-weight nanoGPT checkpoint."""
    from tokenizers import ByteLevelBPETokenizer

    models = tmp_path_factory.mktemp("models")
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(sib200_texts(per_language=100), vocab_size=400, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save_model(str(models), "tiny")
    ckpt = models / "tiny" / "ckpt.pt"
    write_nanogpt_checkpoint(ckpt, vocab_size=bpe.get_vocab_size(), block_size=64)
    return ckpt, models / "tiny"


LAYERS = ["config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json", "config/data-local.json"]


def entry(root: Path | None, subset: str, espeak: str, **over) -> dict:
    e = {"dataset": "Davlan/sib200", "subset": subset, "train_features": ["text"], "eval_feature": "category",
         "splits": {"train": "train", "eval": "validation", "test": "test"}, "task_type": "classification",
         "classes": 7, "filter_length": False, "espeak": espeak, "path": None if root is None else str(root / subset)}
    e.update(over)
    return e


def trial_config(tid, ckpt, tok, sib200_dir, cache, model_type="normal", **datasets) -> dict:
    ds = datasets or {"russian": entry(sib200_dir, "rus_Cyrl", "ru"), "polish": entry(sib200_dir, "pol_Latn", "pl")}
    for lang, e in ds.items():
        e["language"] = lang
    return {"id": tid, "model_type": model_type, "task": "topic", "train_languages": sorted(ds),
            "eval_languages": sorted(ds), "checkpoint": str(ckpt), "tokenizer": str(tok), "datasets": ds,
            "data": {"cache_dir": str(cache), "mirrors": {}}}


def test_nothing_missing(tiny_pretrained, sib200_dir, tmp_path):
    ckpt, tok = tiny_pretrained
    assert check_plan([trial_config("a", ckpt, tok, sib200_dir, tmp_path)]) == []


def test_every_missing_input_listed_once_with_trial_counts(tiny_pretrained, sib200_dir, tmp_path):
    ckpt, tok = tiny_pretrained
    bad_split = entry(sib200_dir, "rus_Cyrl", "ru", splits={"train": "train", "eval": "heldout"})
    configs = [
        trial_config("t1", tmp_path / "none" / "ckpt.pt", tok, sib200_dir, tmp_path),
        trial_config("t2", tmp_path / "none" / "ckpt.pt", tmp_path / "nope", sib200_dir, tmp_path),
        trial_config("t3", ckpt, tok, sib200_dir, tmp_path, russian=bad_split,
                     polish=entry(tmp_path, "pol_Latn", "pl")),
        trial_config("t4", ckpt, tok, sib200_dir, tmp_path, russian=entry(None, "rus_Cyrl", "ru")),
    ]
    msgs = [str(p) for p in check_plan(configs)]
    assert len(msgs) == 6, msgs
    text = "\n".join(msgs)
    assert f"trial t1: $.checkpoint: checkpoint not found: {tmp_path / 'none' / 'ckpt.pt'} (needed by 2 trials, e.g. t1)" in text
    assert f"trial t2: $.tokenizer: {tmp_path / 'nope'}-vocab.json: tokenizer file not found (needed by trial t2)" in text
    assert f"{tmp_path / 'nope'}-merges.txt" in text
    assert f"$.datasets.russian.splits.eval: {sib200_dir / 'rus_Cyrl'}: split 'heldout' not found" in text
    assert f"$.datasets.polish.path: {tmp_path / 'pol_Latn'}: dataset folder not found" in text
    assert "$.datasets.russian: hub dataset Davlan/sib200 (rus_Cyrl) is not in the cache" in text


def test_prefetch_reports_offline_hub_dataset(tiny_pretrained, sib200_dir, tmp_path):
    ckpt, tok = tiny_pretrained
    cfg = trial_config("h", ckpt, tok, sib200_dir, tmp_path, russian=entry(None, "rus_Cyrl", "ru",
                                                                          dataset="no-user/no-dataset"))
    report = prefetch([cfg], tokenize=False)
    assert not report.ok and report.datasets == []
    text = "\n".join(map(str, report.problems))
    assert "no-user/no-dataset (rus_Cyrl): $.datasets.russian.dataset: cannot load dataset" in text
    assert not (tmp_path / "hub").exists()


def test_hub_snapshot_serves_offline_nodes(tiny_pretrained, sib200_dir, tmp_path):
    """What prefetch leaves for a hub dataset (a save_to_disk snapshot) is all a trial needs."""
    from datasets import Dataset, DatasetDict

    from finetune.compute.data import hub_snapshot, prepare_trial_data
    from finetune.compute.tokenizer import load_tokenizer

    ckpt, tok = tiny_pretrained
    hub = entry(None, "rus_Cyrl", "ru", dataset="someone/offline-only", classes=2)
    cfg = trial_config("s", ckpt, tok, sib200_dir, tmp_path, russian=hub)
    assert "someone/offline-only (rus_Cyrl) is not in the cache" in str(check_plan([cfg]))
    rows = [{"text": f"предложение номер {i}", "category": c} for i, c in enumerate(["travel", "health"] * 10)]
    DatasetDict({s: Dataset.from_list(rows) for s in ("train", "validation", "test")}).save_to_disk(
        str(hub_snapshot(hub, tmp_path)))
    assert check_plan([cfg]) == []
    data = prepare_trial_data(cfg, load_tokenizer(tok), 64)
    assert len(data.train) == 20 and data.label_names == ["health", "travel"]


@pytest.fixture
def plan_dir(tiny_pretrained, tmp_path, repo_root, monkeypatch):
    """A real plan (Russian + Polish, normal + ipa, two learning rates) on the tiny model."""
    from finetune.login.plan import build_plan, write_plan

    ckpt, tok = tiny_pretrained
    monkeypatch.chdir(repo_root)
    models = Path(ckpt).parent.parent
    sets = [f"checkpoints.prefix={models}", f"tokenizers.prefix={models}", f"data.cache_dir={tmp_path / 'cache'}"]
    for mt in ("normal", "ipa"):
        sets += [f"checkpoints.{mt}={Path(ckpt).parent.name}", f"tokenizers.{mt}_prefix={Path(tok).name}"]
    plan = build_plan(LAYERS, sets, grid_config="config/grid-demo.json")
    write_plan(plan, tmp_path / "plan")
    return tmp_path / "plan"


def test_prefetch_plan_dir_then_trials_need_no_transcription(plan_dir, tmp_path, monkeypatch, sib200_dir):
    from finetune.compute.data import prepare_trial_data
    from finetune.compute.tokenizer import load_tokenizer
    from finetune.fileio import read_json
    from finetune.login.plan import load_plan, materialize_trial

    assert check_plan(plan_dir) == []
    calls = []
    real = ipa.transcribe
    monkeypatch.setattr(ipa, "transcribe", lambda texts, voice: calls.append(len(texts)) or real(texts, voice))
    report = prefetch(plan_dir)
    assert report.ok and report.trials == 4
    assert sorted(report.transcribed) == [f"{sib200_dir / 'pol_Latn'} (pl)", f"{sib200_dir / 'rus_Cyrl'} (ru)"]
    assert sum(calls) == 2 * 1004  # every sentence of both languages once
    assert len(report.tokenized) == 2  # one per model type (the learning rates share data)

    def forbidden(texts, voice):
        raise AssertionError("transcribing on a compute node")

    monkeypatch.setattr(ipa, "transcribe", forbidden)
    plan = load_plan(plan_dir)
    ipa_trial = next(t for t in plan.trials if t.model_type == "ipa")
    cfg = read_json(materialize_trial(plan_dir, ipa_trial.id))
    data = prepare_trial_data(cfg, load_tokenizer(cfg["tokenizer"]), 64)
    assert len(data.train) == 2 * 701 and set(data.eval) == {"polish", "russian"}
    assert list((tmp_path / "cache" / "maps").glob("*.arrow"))


def test_parallel_transcription_is_found_by_single_process_trials(plan_dir, monkeypatch):
    from finetune.compute.data import prepare_trial_data
    from finetune.compute.tokenizer import load_tokenizer
    from finetune.fileio import read_json
    from finetune.login.plan import load_plan, materialize_trial

    report = prefetch(plan_dir, workers=2, tokenize=False)
    assert report.ok and len(report.transcribed) == 2

    def forbidden(texts, voice):
        raise AssertionError("transcribing again")

    monkeypatch.setattr(ipa, "transcribe", forbidden)
    trial = next(t for t in load_plan(plan_dir).trials if t.model_type == "ipa")
    cfg = read_json(materialize_trial(plan_dir, trial.id))
    data = prepare_trial_data(cfg, load_tokenizer(cfg["tokenizer"]), 64)
    assert len(data.train) == 2 * 701


def test_cli_prefetch_and_check(plan_dir, tiny_pretrained, capsys):
    assert main(["prefetch", str(plan_dir), "--check", "--no-tokenize"]) == 0
    assert main(["prefetch", str(plan_dir), "--no-tokenize"]) == 0
    assert "4 trials: 2 datasets loaded, 2 transcribed, 0 tokenized" in capsys.readouterr().out
    ckpt, _ = tiny_pretrained
    moved = Path(str(ckpt) + ".away")
    os.rename(ckpt, moved)
    try:
        assert main(["prefetch", str(plan_dir), "--check"]) == 2
    finally:
        os.rename(moved, ckpt)
    err = capsys.readouterr().err
    assert f"plan.json: $.checkpoint: checkpoint not found: {ckpt} (needed by 4 trials" in err


def test_cli_prefetch_config_layers_name_the_layer(repo_root, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(repo_root)
    code = main(["prefetch", *LAYERS, "--set", f"checkpoints.prefix={tmp_path}", "--set", f"tokenizers.prefix={tmp_path}",
                 "--model-type", "normal", "--check"])
    assert code == 2
    err = capsys.readouterr().err
    # the layer that named the checkpoint, not the prefix
    assert f"config/finetune-rus-pol.json: $.checkpoints.normal: checkpoint not found: {tmp_path}/rus-pol-normal/ckpt.pt" in err
    assert f"config/finetune-rus-pol.json: $.tokenizers.normal_prefix: {tmp_path}/rus-pol-normal-vocab.json" in err


def test_cli_prefetch_check_honours_set_and_grid_config(repo_root, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(repo_root)
    where = ["--set", f"checkpoints.prefix={tmp_path}", "--set", f"tokenizers.prefix={tmp_path}"]
    assert main(["prefetch", *LAYERS, *where, "--model-type", "normal", "--check"]) == 2
    one = capsys.readouterr().err
    assert f"checkpoint not found: {tmp_path}/rus-pol-normal/ckpt.pt (needed by trial " in one
    assert main(["prefetch", *LAYERS, *where, "--model-type", "normal", "--check",
                 "--grid-config", "config/grid-search.json"]) == 2
    grid = capsys.readouterr().err
    assert f"checkpoint not found: {tmp_path}/rus-pol-normal/ckpt.pt (needed by 6 trials, " in grid
    # a model that exists, set with --set: nothing missing any more for it
    ckpt = tmp_path / "mine" / "ckpt.pt"
    write_nanogpt_checkpoint(ckpt)
    assert main(["prefetch", *LAYERS, *where, "--set", "checkpoints.normal=mine", "--model-type", "normal",
                 "--check"]) == 2
    assert "$.checkpoints.normal" not in capsys.readouterr().err


def test_cli_prefetch_plan_dir_refuses_the_flags_of_config_layers(repo_root, tmp_path, capsys):
    plan = tmp_path / "plan"
    assert main(["plan", *(str(repo_root / f) for f in LAYERS), "-o", str(plan), "--no-submit"]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in plan.rglob("*"))
    for flags, named in [(["--set", "checkpoints.prefix=/x"], ["--set"]),
                         (["--grid-config", str(repo_root / "config" / "grid-search.json")], ["--grid-config"]),
                         (["--matrix", "--model-type", "ipa"], ["--matrix", "--model-type"])]:
        assert main(["prefetch", str(plan), "--check", *flags]) == 2
        err = capsys.readouterr().err
        assert all(f"{flag}: applies to config layers, not to the plan directory {plan}" in err for flag in named), err
        assert "checkpoint not found" not in err  # refused before checking anything
    assert sorted(p.name for p in plan.rglob("*")) == before


def test_cli_transcribe(capsys):
    assert main(["transcribe", "--espeak", "ru", "Я люблю тебя.", "Теперь"]) == 0
    assert capsys.readouterr().out.splitlines() == ["ja ɭʲʉbɭʲʉ tʲibʲɑ.", "tʲipʲerʲ"]
