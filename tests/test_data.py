"""Loading, labels, IPA columns and tokenization of a trial's datasets, on (copies of) SIB-200.

SIB-200 (Adelani et al. 2023; Apache-2.0, sentences from FLORES-200, CC BY-SA 4.0): see
data/sib200/README.md (in the repository).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from finetune.compute import data as fdata  # noqa: E402
from finetune.compute import ipa  # noqa: E402
from finetune.errors import FinetuneError  # noqa: E402

SPLITS = {"train": 40, "dev": 12, "test": 12}
LANGS = {"russian": ("rus_Cyrl", "ru"), "polish": ("pol_Latn", "pl")}


def read_rows(path: Path, n: int) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))[:n]


@pytest.fixture(scope="module")
def sib_rows(sib200_dir) -> dict[str, dict[str, list[dict[str, str]]]]:
    """subset -> split -> the first rows of the real data."""
    return {
        subset: {split: read_rows(sib200_dir / subset / f"{split}.tsv", n) for split, n in SPLITS.items()}
        for subset, _ in LANGS.values()
    }


@pytest.fixture(scope="module")
def label_list(sib200_dir) -> list[str]:
    return (sib200_dir / "rus_Cyrl" / "labels.txt").read_text(encoding="utf-8").split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, sib_rows):
    """A small byte-level BPE trained on the rows (text and IPA), loaded the way trials load theirs."""
    from tokenizers import ByteLevelBPETokenizer

    from finetune.compute.tokenizer import load_tokenizer

    texts = [r["text"] for splits in sib_rows.values() for rows in splits.values() for r in rows]
    texts += ipa.transcribe(texts[:60], "ru")
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(texts, vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False)
    out = tmp_path_factory.mktemp("tok")
    bpe.save_model(str(out), "tiny")
    return load_tokenizer(out / "tiny")


def write_split(folder: Path, name: str, rows: list[dict], fmt: str) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if fmt == "tsv":
        df.to_csv(folder / f"{name}.tsv", sep="\t", index=False)
    elif fmt == "csv":
        df.to_csv(folder / f"{name}.csv", index=False)
    elif fmt == "json":
        (folder / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif fmt == "jsonl":
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "parquet":
        df.to_parquet(folder / f"{name}.parquet")
    else:
        raise AssertionError(fmt)


def make_mirror(root: Path, sib_rows, fmt: str, *, names=("train", "dev", "test")) -> Path:
    """A mirror root with ``<subset>/<split>.<fmt>`` (or save_to_disk folders) for both languages."""
    for subset, splits in sib_rows.items():
        if fmt == "save_to_disk":
            from datasets import Dataset, DatasetDict

            DatasetDict({n: Dataset.from_list(splits[s]) for n, s in zip(names, SPLITS, strict=True)}).save_to_disk(
                str(root / subset)
            )
        else:
            for name, split in zip(names, SPLITS, strict=True):
                write_split(root / subset, name, splits[split], fmt)
    return root


def entry(language: str, root: Path | None, **over) -> dict:
    subset, espeak = LANGS[language]
    e = {
        "dataset": "Davlan/sib200",
        "subset": subset,
        "train_features": ["text"],
        "eval_feature": "category",
        "splits": {"train": "train", "eval": "validation", "test": "test"},
        "task_type": "classification",
        "classes": 7,
        "filter_length": True,
        "language": language,
        "espeak": espeak,
        "path": None if root is None else str(root),
    }
    e.update(over)
    return e


def trial(root: Path, model_type="normal", train=("polish", "russian"), evals=("polish", "russian"), **over) -> dict:
    return {
        "id": "t1",
        "model_type": model_type,
        "task": "topic",
        "train_languages": list(train),
        "eval_languages": list(evals),
        "datasets": {lang: entry(lang, root, **over) for lang in sorted(set(train) | set(evals))},
    }


@pytest.fixture(scope="module")
def tsv_root(tmp_path_factory, sib_rows) -> Path:
    return make_mirror(tmp_path_factory.mktemp("tsv"), sib_rows, "tsv")


@pytest.fixture(scope="module")
def reference(tsv_root, tokenizer, tmp_path_factory):
    return fdata.prepare_trial_data(trial(tsv_root), tokenizer, 256, cache_dir=tmp_path_factory.mktemp("cache"))


def as_rows(ds) -> list[tuple]:
    return [(tuple(r["input_ids"]), r["labels"], r["language"], r["row"]) for r in ds]


# -- formats, splits, shapes -----------------------------------------------------------------


def test_reference_shapes_and_union(reference, tokenizer, sib_rows, label_list):
    d = reference
    assert len(d.train) == 80 and set(d.train["language"]) == {"polish", "russian"}
    assert set(d.eval) == set(d.test) == {"polish", "russian"}
    assert all(len(ds) == 12 for ds in [*d.eval.values(), *d.test.values()])
    assert set(d.train.column_names) >= {"input_ids", "labels", "length", "language"}
    # the input is exactly the tokenized text; lengths are real
    row = d.eval["russian"][3]
    text = sib_rows["rus_Cyrl"]["dev"][row["row"]]["text"]
    assert row["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert row["length"] == len(row["input_ids"])
    # no labels list in the entries: sorted unique values
    assert d.label_names == sorted(label_list)
    assert d.label_names[row["labels"]] == sib_rows["rus_Cyrl"]["dev"][row["row"]]["category"]
    assert d.dropped == {lang: {"train": 0, "eval": 0, "test": 0} for lang in ("polish", "russian")}


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet", "save_to_disk"])
def test_every_local_format_gives_the_same_data(fmt, tmp_path, sib_rows, tokenizer, reference):
    root = make_mirror(tmp_path / fmt, sib_rows, fmt)
    d = fdata.prepare_trial_data(trial(root), tokenizer, 256, cache_dir=tmp_path / "cache")
    assert d.label_names == reference.label_names
    assert as_rows(d.train) == as_rows(reference.train)
    for lang in ("polish", "russian"):
        assert as_rows(d.eval[lang]) == as_rows(reference.eval[lang])
        assert as_rows(d.test[lang]) == as_rows(reference.test[lang])


@pytest.mark.parametrize("alias", ["valid", "validation"])
def test_split_aliases(alias, tmp_path, sib_rows, tokenizer, reference):
    root = make_mirror(tmp_path / alias, sib_rows, "tsv", names=("train", alias, "test"))
    d = fdata.prepare_trial_data(trial(root), tokenizer, 256, cache_dir=tmp_path / "cache")
    assert as_rows(d.eval["polish"]) == as_rows(reference.eval["polish"])


def test_local_dataset_path_without_mirror(tsv_root, tokenizer, tmp_path, reference):
    t = trial(tsv_root, train=("russian",), evals=("russian",))
    t["datasets"]["russian"].update(dataset=str(tsv_root / "rus_Cyrl"), path=None)
    d = fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)
    assert as_rows(d.eval["russian"]) == as_rows(reference.eval["russian"])


def test_test_split_is_optional_and_train_only_languages(tsv_root, tokenizer, tmp_path):
    t = trial(tsv_root, train=("polish", "russian"), evals=("russian",))
    for e in t["datasets"].values():
        e["splits"] = {"train": "train", "eval": "dev"}
    d = fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)
    assert d.test == {} and set(d.eval) == {"russian"} and len(d.train) == 80


def test_real_sib200_folder_as_mirror(sib200_dir, tokenizer, tmp_path, label_list):
    t = trial(sib200_dir, train=("russian",), evals=("russian",), labels=label_list)
    d = fdata.prepare_trial_data(t, tokenizer, 1024, cache_dir=tmp_path)
    assert (len(d.train), len(d.eval["russian"]), len(d.test["russian"])) == (701, 99, 204)
    assert d.label_names == label_list  # the entry's list fixes the ids
    cats = [r["category"] for r in read_rows(sib200_dir / "rus_Cyrl" / "dev.tsv", 99)]
    assert [label_list[i] for i in d.eval["russian"]["labels"]] == [cats[i] for i in d.eval["russian"]["row"]]


# -- inputs, length --------------------------------------------------------------------------


def test_features_joined_with_eos(tsv_root, tokenizer, tmp_path, sib_rows):
    t = trial(tsv_root, train=("polish",), evals=("polish",), train_features=["text", "category"])
    d = fdata.prepare_trial_data(t, tokenizer, 512, cache_dir=tmp_path)
    assert d.separator == tokenizer.eos_token
    row = d.train[0]
    src = sib_rows["pol_Latn"]["train"][row["row"]]
    expected = tokenizer(src["text"] + tokenizer.eos_token + src["category"], add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == expected
    assert row["input_ids"].count(tokenizer.eos_token_id) == 1


def test_filter_length_drops_or_truncates(tsv_root, tokenizer, tmp_path, reference):
    lengths = reference.train["length"]
    block = sorted(lengths)[len(lengths) // 2]
    longer = sum(n > block for n in lengths)
    dropped = fdata.prepare_trial_data(trial(tsv_root), tokenizer, block, cache_dir=tmp_path)
    assert len(dropped.train) == len(lengths) - longer and max(dropped.train["length"]) <= block
    assert sum(dropped.dropped[lang]["train"] for lang in ("polish", "russian")) == longer
    cut = fdata.prepare_trial_data(trial(tsv_root, filter_length=False), tokenizer, block, cache_dir=tmp_path)
    assert len(cut.train) == len(lengths) and max(cut.train["length"]) == block
    full = {r[2:]: r[0] for r in as_rows(reference.train)}
    for ids, _, lang, row in as_rows(cut.train):
        assert ids == full[(lang, row)][:block]


# -- labels ----------------------------------------------------------------------------------


def test_label_list_fixes_ids_and_is_shared(tsv_root, tokenizer, tmp_path, label_list, reference):
    d = fdata.prepare_trial_data(trial(tsv_root, labels=label_list), tokenizer, 256, cache_dir=tmp_path)
    assert d.label_names == label_list != reference.label_names
    for ds, ref in [(d.train, reference.train), (d.eval["polish"], reference.eval["polish"])]:
        assert [label_list[i] for i in ds["labels"]] == [reference.label_names[i] for i in ref["labels"]]


def test_integer_labels_are_ids(tmp_path, sib_rows, tokenizer, label_list, reference):
    rows = {
        subset: {s: [{**r, "category": label_list.index(r["category"])} for r in rs] for s, rs in splits.items()}
        for subset, splits in sib_rows.items()
    }
    root = make_mirror(tmp_path / "ints", rows, "jsonl")
    d = fdata.prepare_trial_data(trial(root, labels=label_list), tokenizer, 256, cache_dir=tmp_path / "c")
    assert [label_list[i] for i in d.train["labels"]] == [reference.label_names[i] for i in reference.train["labels"]]


def test_different_label_lists_across_languages(tsv_root, tokenizer, tmp_path, label_list):
    t = trial(tsv_root, labels=label_list)
    t["datasets"]["polish"]["labels"] = list(reversed(label_list))
    with pytest.raises(fdata.DataError, match=r"\$\.datasets\.\w+\.labels: differs"):
        fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)


def test_unknown_label_and_wrong_classes(tsv_root, tokenizer, tmp_path, label_list):
    t = trial(tsv_root, labels=label_list[:-1], classes=6)
    with pytest.raises(fdata.DataError) as e:
        fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)
    msg = str(e.value)
    assert "$.datasets.russian.labels" in msg and label_list[-1] in msg and "'category'" in msg
    assert str(tsv_root / "rus_Cyrl") in msg
    t = trial(tsv_root, classes=5)
    with pytest.raises(fdata.DataError, match=r"\$\.datasets\.polish\.classes: classes is 5 but there are 7 labels"):
        fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)


# -- errors ----------------------------------------------------------------------------------


def test_missing_column_names_dataset_and_column(tsv_root, tokenizer, tmp_path):
    t = trial(tsv_root, train_features=["sentence"], eval_feature="topic")
    with pytest.raises(FinetuneError) as e:
        fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)
    assert e.value.exit_code == 2
    msg = str(e.value)
    for lang, subset in (("polish", "pol_Latn"), ("russian", "rus_Cyrl")):
        assert f"{tsv_root / subset}: $.datasets.{lang}.train_features[0]: column 'sentence' not in split train" in msg
        assert f"{tsv_root / subset}: $.datasets.{lang}.eval_feature: label column 'topic'" in msg


def test_missing_split_names_dataset_and_split(tsv_root, tokenizer, tmp_path):
    t = trial(tsv_root)
    t["datasets"]["russian"]["splits"]["test"] = "heldout"
    with pytest.raises(fdata.DataError) as e:
        fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)
    msg = str(e.value)
    assert f"{tsv_root / 'rus_Cyrl'}: $.datasets.russian.splits.test: split 'heldout' not found" in msg
    assert "has: dev, test, train" in msg
    assert "polish" not in msg


def test_missing_folder_and_language(tmp_path, tokenizer):
    t = trial(tmp_path / "nowhere", train=("russian",), evals=("russian", "polish"))
    del t["datasets"]["polish"]
    with pytest.raises(fdata.DataError) as e:
        fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)
    msg = str(e.value)
    assert "$.datasets.russian.path: dataset folder not found" in msg
    assert "$.datasets.polish: no dataset for language 'polish'" in msg


def test_hub_dataset_offline_is_a_clean_error(tokenizer, tmp_path):
    t = trial(tmp_path, train=("russian",), evals=("russian",))
    t["datasets"]["russian"].update(path=None, dataset="no-such-user/no-such-dataset")
    with pytest.raises(fdata.DataError, match=r"no-such-user/no-such-dataset \(rus_Cyrl\): \$\.datasets\.russian\.dataset"):
        fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)


def test_cli_exit_code_is_2_for_data_errors(tsv_root, tokenizer, tmp_path):
    import argparse

    from finetune.cli import run_script

    def handler(_args):
        fdata.prepare_trial_data(trial(tsv_root, eval_feature="topic"), tokenizer, 256, cache_dir=tmp_path)

    assert run_script(argparse.ArgumentParser(), handler, []) == 2


# -- IPA -------------------------------------------------------------------------------------


class CountingTranscriber:
    def __init__(self, real):
        self.real, self.texts = real, 0

    def __call__(self, texts, espeak):
        self.texts += len(texts)
        return self.real(texts, espeak)


def test_ipa_columns_made_once_then_cached(tsv_root, tokenizer, tmp_path, monkeypatch, sib_rows):
    counter = CountingTranscriber(ipa.transcribe)
    monkeypatch.setattr(ipa, "transcribe", counter)
    t = trial(tsv_root, model_type="ipa")
    first = fdata.prepare_trial_data(t, tokenizer, 512, cache_dir=tmp_path)
    assert counter.texts == 2 * sum(SPLITS.values())  # every text once
    row = first.eval["russian"][0]
    text = sib_rows["rus_Cyrl"]["dev"][row["row"]]["text"]
    (phon,) = counter.real([text], "ru")
    assert row["input_ids"] == tokenizer(phon, add_special_tokens=False)["input_ids"]
    counter.texts = 0
    second = fdata.prepare_trial_data(t, tokenizer, 512, cache_dir=tmp_path)
    assert counter.texts == 0
    assert as_rows(second.train) == as_rows(first.train)
    # a different tokenizer block size reuses the transcriptions too
    fdata.prepare_trial_data(t, tokenizer, 300, cache_dir=tmp_path)
    assert counter.texts == 0


def test_existing_phoneme_columns_are_used(tmp_path, sib_rows, tokenizer, monkeypatch):
    rows = {
        subset: {s: [{**r, "text-phoneme": f"ipa {i}"} for i, r in enumerate(rs)] for s, rs in splits.items()}
        for subset, splits in sib_rows.items()
    }
    root = make_mirror(tmp_path / "ph", rows, "parquet")

    def forbidden(texts, espeak):
        raise AssertionError("transcribed although the dataset has -phoneme columns")

    monkeypatch.setattr(ipa, "transcribe", forbidden)
    d = fdata.prepare_trial_data(trial(root, model_type="ipa"), tokenizer, 256, cache_dir=tmp_path / "c")
    row = d.train[5]
    assert row["input_ids"] == tokenizer(f"ipa {row['row']}", add_special_tokens=False)["input_ids"]


def test_ipa_without_espeak_code(tsv_root, tokenizer, tmp_path):
    t = trial(tsv_root, model_type="ipa", train=("russian",), evals=("russian",))
    t["datasets"]["russian"]["espeak"] = None
    with pytest.raises(fdata.DataError, match=r"\$\.datasets\.russian\.espeak"):
        fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)


def test_tokenization_is_cached_under_cache_dir(tsv_root, tokenizer, tmp_path):
    t = trial(tsv_root)
    d = fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)
    files = {f["filename"] for ds in d.eval.values() for f in ds.cache_files}
    assert files and all(Path(f).parent == tmp_path / "maps" for f in files)
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    again = fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path)
    assert {f["filename"] for ds in again.eval.values() for f in ds.cache_files} == files
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes


def test_batches_from_prepared_data(reference, tokenizer):
    from finetune.compute.batching import LengthGroupedBatchSampler, collate

    train = reference.train
    lengths = train["length"]
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=0)
    pad = tokenizer.pad_token_id
    seen = 0
    for idx in sampler:
        batch = collate([train[i] for i in idx], pad)
        width = max(lengths[i] for i in idx)
        assert batch["input_ids"].shape == (len(idx), width)
        assert batch["attention_mask"].sum(1).tolist() == [lengths[i] for i in idx]
        assert batch["labels"].tolist() == [train[i]["labels"] for i in idx]
        for row, i in enumerate(idx):
            assert batch["input_ids"][row, : lengths[i]].tolist() == train[i]["input_ids"]
            assert (batch["input_ids"][row, lengths[i]:] == pad).all()
        seen += len(idx)
    assert seen == len(train)


def test_a_dollar_in_a_dataset_path_is_literal(tsv_root, tokenizer, tmp_path, reference, monkeypatch):
    """Issue 14: ``/x/cost$HOME/sib`` is that folder, never ``/x/cost/root/sib``."""
    import shutil

    monkeypatch.setenv("FT_I14_VAR", "elsewhere")
    odd = tmp_path / "cost$FT_I14_VAR" / "sib~1"
    shutil.copytree(tsv_root, odd)
    (tmp_path / "costelsewhere").mkdir()  # where an expansion would look: nothing there
    t = trial(odd, train=("russian",), evals=("russian",))
    t["datasets"]["russian"].update(dataset=str(odd / "rus_Cyrl"), path=None)
    d = fdata.prepare_trial_data(t, tokenizer, 256, cache_dir=tmp_path / "cache")
    assert as_rows(d.eval["russian"]) == as_rows(reference.eval["russian"])
