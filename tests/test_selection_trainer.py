"""training.selection in the trainer: zero-shot (train-languages) vs oracle (each-language) checkpoints.

A constructed case: train on Russian, evaluate on Russian and on "scrambled", a copy of the Russian
slice whose dev and test labels are shuffled, so its dev curve peaks at another step than
Russian's. Zero-shot must keep the checkpoint that is best on Russian's dev set for both targets;
the oracle reports each target at its own best step.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer import make_trial, metric_lines, run_in_process, trial_config, write_sib_slice

from finetune.analysis.significance import scores


def scrambled_copy(data_root, subset="rus_Cyrl", name="scr_Cyrl"):
    """The Russian slice with dev/test labels renamed: the most frequent training class becomes the
    rarest and so on. As the model learns the class prior, Russian's dev loss falls and this one's
    rises: its best step comes early, Russian's late."""
    from collections import Counter

    def read(split):
        with open(data_root / subset / f"{split}.tsv", encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t"))

    order = [c for c, _ in Counter(r["category"] for r in read("train")).most_common()]
    order += sorted({r["category"] for s in ("dev", "test") for r in read(s)} - set(order))
    rename = dict(zip(order, reversed(order), strict=True))
    (data_root / name).mkdir()
    for split in ("train", "dev", "test"):
        rows = read(split)
        if split != "train":
            for r in rows:
                r["category"] = rename[r["category"]]
        with open(data_root / name / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["index_id", "category", "text"], delimiter="\t")
            w.writeheader()
            w.writerows(rows)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_pretrained, sib200_dir):  # noqa: F811
    ckpt, tokenizer = tiny_pretrained
    root = tmp_path_factory.mktemp("selection")
    data = write_sib_slice(root / "sib", sib200_dir)
    scrambled_copy(data)
    runs = {}
    for selection in ("train-languages", "each-language"):
        cfg = trial_config(ckpt, tokenizer, data, root / "cache", selection,
                           training={"eval_interval": 2, "selection": selection, "metric": "loss"})
        entry = dict(cfg["datasets"]["russian"], subset="scr_Cyrl", language="scrambled")
        cfg["datasets"]["scrambled"] = entry
        cfg["eval_languages"] = ["russian", "scrambled"]
        trial = make_trial(root, cfg)
        assert run_in_process(trial, dump_logits=True) == 0, (trial / "log.txt").read_text()[-2000:]
        runs[selection] = trial
    return runs


def _best(lines, language):
    """The first step with the lowest dev loss of ``language`` (the trainer keeps the first)."""
    own = [x for x in lines if x["language"] == language and x["split"] == "eval"]
    low = min(x["loss"] for x in own)
    return next(x for x in own if x["loss"] == low)


def test_zero_shot_keeps_the_training_languages_checkpoint_the_oracle_another(two_runs):
    zero, oracle = (json.loads((two_runs[k] / "result.json").read_text()) for k in ("train-languages", "each-language"))
    lines = metric_lines(two_runs["train-languages"])
    assert lines == metric_lines(two_runs["each-language"])  # selection never changes training

    russian_best, scrambled_best = _best(lines, "russian"), _best(lines, "scrambled")
    assert russian_best["step"] != scrambled_best["step"]  # the constructed case
    assert zero["selection"] == {"protocol": "train-languages", "checkpoint_languages": ["russian"]}
    assert zero["best_step"] == russian_best["step"]
    # zero-shot: the scrambled target is reported at Russian's best step, not its own
    assert zero["metrics"]["scrambled"]["eval"]["loss"] == pytest.approx(
        next(x for x in lines if x["language"] == "scrambled" and x["step"] == russian_best["step"])["loss"])
    assert zero["metrics"]["scrambled"]["eval"]["loss"] > scrambled_best["loss"]

    assert oracle["selection"]["protocol"] == "each-language"
    assert oracle["selection"]["best_steps"] == {"russian": russian_best["step"], "scrambled": scrambled_best["step"]}
    assert oracle["metrics"]["scrambled"]["eval"]["loss"] == pytest.approx(scrambled_best["loss"])
    for split in ("eval", "test"):
        assert oracle["metrics"]["russian"][split] == pytest.approx(zero["metrics"]["russian"][split])


def test_oracle_keeps_the_predictions_of_each_languages_own_best_step(two_runs):
    trial = two_runs["each-language"]
    result = json.loads((trial / "result.json").read_text())
    for lang in ("russian", "scrambled"):
        with np.load(trial / "logits" / f"each-language-{lang}-test.npz") as d:
            got = scores(d["logits"].argmax(1), d["labels"], "macro_f1")[0]
        assert got == pytest.approx(result["metrics"][lang]["test"]["macro_f1"], abs=1e-6)
