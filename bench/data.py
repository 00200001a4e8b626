"""Data throughput over the 8 SIB-200 languages (train + dev + test, 1004 sentences each):

* IPA transcription (finetune.compute.ipa.transcribe, espeak-ng from espeakng-loader), sentences/s;
* tokenization (the fast byte-level BPE of finetune.compute.tokenizer), sentences/s and tokens/s, raw
  and through prepare_trial_data (cold cache: load + label + tokenize + write arrow; warm cache);
* padding with and without length grouping (batch 32) on the real token lengths.

    .venv/bin/python bench/data.py                 # all 8 languages
    .venv/bin/python bench/data.py rus_Cyrl pol_Latn

Uses a throwaway cache dir. The tokenizer is trained here (vocab 2000) on the training sentences.
"""

from __future__ import annotations

import csv
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SIB200 = REPO / "data" / "sib200"
LANGS = {"bel_Cyrl": "be", "bul_Cyrl": "bg", "rus_Cyrl": "ru", "ukr_Cyrl": "uk",
         "ces_Latn": "cs", "pol_Latn": "pl", "slk_Latn": "sk", "eng_Latn": "en-us"}


def texts_of(subset: str) -> list[str]:
    out = []
    for split in ("train", "dev", "test"):
        with open(SIB200 / subset / f"{split}.tsv", encoding="utf-8", newline="") as f:
            out += [r["text"] for r in csv.DictReader(f, delimiter="\t")]
    return out


def make_tokenizer(tmp: Path, texts: list[str]):
    from tokenizers import ByteLevelBPETokenizer

    from finetune.compute.tokenizer import load_tokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(texts, vocab_size=2000, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(tmp), "bench")
    return load_tokenizer(tmp / "bench")


def trial(subset: str, espeak: str, model_type: str) -> dict:
    e = {"dataset": "Davlan/sib200", "subset": subset, "train_features": ["text"], "eval_feature": "category",
         "splits": {"train": "train", "eval": "validation", "test": "test"}, "task_type": "classification",
         "classes": 7, "filter_length": False, "espeak": espeak, "path": str(SIB200 / subset), "language": subset}
    return {"id": subset, "model_type": model_type, "train_languages": [subset], "eval_languages": [subset],
            "datasets": {subset: e}}


def main(argv: list[str]) -> int:
    from finetune.compute import ipa
    from finetune.compute.batching import LengthGroupedBatchSampler, padding_fraction
    from finetune.compute.data import prepare_trial_data

    langs = argv or list(LANGS)
    all_texts = {s: texts_of(s) for s in langs}
    ipa.transcribe(["warm up"], "en-us")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tok = make_tokenizer(tmp, [t for s in langs for t in all_texts[s][:701]])
        print(f"{'language':10} {'n':>5} {'ipa sent/s':>10} {'ipa kchar/s':>11} {'tok sent/s':>10} "
              f"{'tok ktok/s':>10} {'prep cold s':>11} {'prep warm s':>11} {'pad rand':>8} {'pad group':>9}")
        totals = {"n": 0, "ipa_s": 0.0, "tok_s": 0.0, "tokens": 0}
        for subset in langs:
            texts = all_texts[subset]
            espeak = LANGS[subset]
            ipa.transcribe(texts[:5], espeak)  # backend start-up is not throughput
            t0 = time.perf_counter()
            ipa.transcribe(texts, espeak)
            ipa_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ids = tok(texts, add_special_tokens=False)["input_ids"]
            tok_s = time.perf_counter() - t0
            tokens = sum(len(x) for x in ids)
            cache = tmp / f"cache-{subset}"
            t0 = time.perf_counter()
            prepare_trial_data(trial(subset, espeak, "normal"), tok, 1024, cache_dir=cache)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            prepare_trial_data(trial(subset, espeak, "normal"), tok, 1024, cache_dir=cache)
            warm = time.perf_counter() - t0
            lengths = [len(x) for x in ids]
            grouped = LengthGroupedBatchSampler(lengths, 32, seed=0).batches(0)
            order = list(range(len(lengths)))
            random.Random(0).shuffle(order)
            plain = [order[i: i + 32] for i in range(0, len(order), 32)]
            chars = sum(len(t) for t in texts)
            print(f"{subset:10} {len(texts):5d} {len(texts) / ipa_s:10.0f} {chars / ipa_s / 1e3:11.1f} "
                  f"{len(texts) / tok_s:10.0f} {tokens / tok_s / 1e3:10.0f} {cold:11.2f} {warm:11.2f} "
                  f"{padding_fraction(lengths, plain):8.1%} {padding_fraction(lengths, grouped):9.1%}")
            totals["n"] += len(texts)
            totals["ipa_s"] += ipa_s
            totals["tok_s"] += tok_s
            totals["tokens"] += tokens
        print(f"{'all':10} {totals['n']:5d} {totals['n'] / totals['ipa_s']:10.0f} {'':11} "
              f"{totals['n'] / totals['tok_s']:10.0f} {totals['tokens'] / totals['tok_s'] / 1e3:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
