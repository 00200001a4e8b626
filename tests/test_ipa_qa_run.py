"""End to end: an IPA question-answering trial planned with `finetune plan` from config layers
and run by the local executor, on SQuAD-style Russian and Polish sets whose IPA columns the
trial makes itself with real espeak-ng (the answer spans kept through the transcription).

A tiny model pretrained on IPA text stands in for the IPA checkpoint. Checked: result.json has
exact match and F1 per eval language; the dumped predictions are spans of the IPA contexts the
model read; every IPA gold answer is the transcription of the original-script answer at its
recorded offset, so scores are against the original questions' answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nanogpt_fixtures import make_tiny_pretrained, sib200_texts
from task_fixtures import squad_rows, write_squad

REPO = Path(__file__).resolve().parent.parent
QA = {"train_features": ["question", "context"], "eval_feature": "answers",
      "splits": {"train": "train", "eval": "validation"}, "task_type": "question-answering"}


@pytest.fixture(scope="module")
def ipa_model(tmp_path_factory):
    from finetune.compute.ipa import transcribe

    texts = transcribe(sib200_texts(("rus_Cyrl",), 80), "ru") + transcribe(sib200_texts(("pol_Latn",), 80), "pl")
    root = tmp_path_factory.mktemp("ipa-model")
    make_tiny_pretrained(root, texts, name="tiny-ipa")
    return root


def test_ipa_qa_trial_planned_and_run_locally(tmp_path, ipa_model, config_dir):
    conf = tmp_path / "conf"
    conf.mkdir()
    db = json.loads((config_dir / "language-database.json").read_text(encoding="utf-8"))
    for lang in ("russian", "polish"):  # only the original script: the trial transcribes
        db[lang]["qa"] = {"squad": {**QA, "dataset": str(write_squad(tmp_path / "squad" / lang, lang))}}
    (conf / "language-database.json").write_text(json.dumps(db))
    (conf / "pair.json").write_text(json.dumps({
        "checkpoints": {"prefix": str(ipa_model), "ipa": "tiny-ipa", "normal": "tiny-ipa"},
        "tokenizers": {"prefix": str(ipa_model), "ipa_prefix": "tiny-ipa", "normal_prefix": "tiny-ipa"}}))
    (conf / "task.json").write_text(json.dumps({
        "task": "qa", "datasets": {"russian": "squad", "polish": "squad"},
        "hyperparameters": {"learning_rate": 2e-3, "batch_size": 8, "epochs": 1, "max_steps": 6, "doc_stride": 16,
                            "top_k": 10, "max_answer_length": 12, "dropout": 0.0},
        "training": {"metric": "f1", "eval_interval": 3, "checkpoint_interval": 100, "device": "cpu",
                     "num_workers": 0, "dump_logits": True},
        "data": {"cache_dir": str(tmp_path / "cache")}}))
    plan = tmp_path / "plan"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "finetune", "plan", str(conf / "pair.json"), str(conf / "task.json"),
                           "--model-type", "ipa", "-o", str(plan), "--executor", "local", "--yes"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    from finetune.login.plan import load_plan

    records = load_plan(plan).trials
    assert records and {t.model_type for t in records} == {"ipa"}
    for record in records:
        trial = plan / "trials" / record.id
        result = json.loads((trial / "result.json").read_text())
        assert result["state"] == "finished"
        for lang in record.eval_languages:
            m = result["metrics"][lang]["eval"]
            assert set(m) == {"loss", "exact_match", "f1"} and 0 <= m["exact_match"] <= m["f1"] <= 1
    # one trial's predictions, against the IPA data it was scored on (transcribed by the trial)
    record = next(t for t in records if "russian" in t.eval_languages)
    trial = plan / "trials" / record.id
    config = json.loads((trial / "config.json").read_text())
    assert config["model_type"] == "ipa" and config["checkpoint"].endswith("tiny-ipa/ckpt.pt")
    from finetune.compute.data import load_trial_raw
    from finetune.compute.ipa import transcribe

    raw, problems = load_trial_raw({**config, "train_languages": [], "eval_languages": ["russian"]},
                                   cache_dir=tmp_path / "cache")
    assert not problems
    ds = raw["russian"]["eval"]
    originals = squad_rows("russian", offset=20)
    dump = np.load(trial / "logits" / f"{record.id}-russian-eval.npz")
    predictions = [str(p) for p in dump["prediction"]]
    assert len(predictions) == len(ds) == len(originals)
    for row, original, prediction in zip(ds, originals, predictions, strict=True):
        ipa_context = row["context-phoneme"]
        assert row["context"] == original["context"]  # the original text is kept beside its IPA
        assert prediction and prediction in ipa_context  # a span of what the model read
        gold = row["answers-phoneme"]
        text, start = gold["text"][0], gold["answer_start"][0]
        assert ipa_context[start:start + len(text)] == text  # the IPA answer is where it says
        assert text.strip() == transcribe([original["answers"]["text"][0]], "ru")[0].strip()
    em, f1 = dump["exact_match"], dump["f1"]
    assert f1.mean() == pytest.approx(json.loads((trial / "result.json").read_text())
                                      ["metrics"]["russian"]["eval"]["f1"])
    assert (em <= f1).all()
