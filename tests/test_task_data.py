"""QA windows and IPA with answer spans, causal-LM packing, on small datasets in the real formats."""

from __future__ import annotations

import os

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from task_fixtures import entry, squad_rows, write_squad, write_text

from finetune.compute.lm_data import pack
from finetune.compute.qa_answers import answers_of, transcribe_with_answers, word_boundary_cuts

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_pack_by_hand():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    # stream: 1 2 3 E 4 5 E 6 7 8 9 E (12 tokens; E = 0)
    assert pack(docs, 4, 0) == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert pack(docs, 5, 0) == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]]  # the short tail is dropped
    assert pack([[1, 2]], 8, 0) == [[1, 2, 0]]  # less than one block: one short chunk
    assert pack([], 8, 0) == []


def test_word_boundary_cuts_move_outwards():
    text = "Stolicą Polski jest Warszawa."
    assert word_boundary_cuts(text, [(20, 28)]) == [0, 20, 28, len(text)]
    assert word_boundary_cuts(text, [(22, 26)]) == [0, 20, 28, len(text)]  # inside a word: the whole word


def test_ipa_answers_are_exact_substrings_at_their_offsets():
    """Real espeak-ng for Russian and Polish: every transcribed answer sits at its IPA answer_start."""
    for language, voice in (("russian", "ru"), ("polish", "pl")):
        rows = squad_rows(language) + squad_rows(language, offset=20)
        # a second, overlapping gold answer and one that starts inside a word
        rows[0]["answers"] = {"text": [rows[0]["answers"]["text"][0], rows[0]["context"][:5]],
                              "answer_start": [rows[0]["answers"]["answer_start"][0], 0]}
        rows[1]["answers"]["text"][0] = rows[1]["answers"]["text"][0][1:]
        rows[1]["answers"]["answer_start"][0] += 1
        contexts, answers = transcribe_with_answers([r["context"] for r in rows],
                                                    [answers_of(r["answers"]) for r in rows], voice)
        assert len(contexts) == len(rows)
        checked = 0
        for ctx, ans, row in zip(contexts, answers, rows, strict=True):
            assert len(ans["text"]) == len(row["answers"]["text"])
            for text, start in zip(ans["text"], ans["answer_start"], strict=True):
                assert text and ctx[start:start + len(text)] == text
                assert not any(c.isascii() and c.isalpha() and c not in "abdefhijklmnoprstuvwxz" for c in text), text
                checked += 1
        assert checked == sum(len(r["answers"]["text"]) for r in rows)
        # a whole-word answer is transcribed as that word alone would be
        from finetune.compute.ipa import transcribe

        assert answers[2]["text"][0] == transcribe([rows[2]["answers"]["text"][0]], voice)[0]


def test_qa_windows_over_long_contexts_hold_the_answer(tiny_pretrained, tmp_path):  # noqa: F811
    from finetune.compute.qa_data import prepare_qa_data
    from finetune.compute.tokenizer import load_tokenizer

    ckpt, prefix = tiny_pretrained
    tok = load_tokenizer(prefix)
    config = {"id": "t", "model_type": "normal", "train_languages": ["russian", "polish"],
              "eval_languages": ["russian", "polish"], "data": {"cache_dir": str(tmp_path / "cache")},
              "datasets": {lang: entry(write_squad(tmp_path / lang, lang), "question-answering", lang)
                           for lang in ("russian", "polish")}}
    data = prepare_qa_data(config, tok, 64, doc_stride=16)
    train = data.train
    rows = train["row"]
    assert len(train) > len(set(zip(train["language"], rows, strict=True)))  # some contexts need several windows
    assert max(train["length"]) <= 64
    found = set()
    raw = {lang: squad_rows(lang) + squad_rows(lang, offset=9) for lang in ("russian", "polish")}
    for w in train:
        start, end = w["labels"]
        if start == 0:
            assert end == 0
            continue
        found.add((w["language"], w["row"]))
        offsets = w["offsets"]
        c0 = offsets[start - w["context_start"]][0]
        c1 = offsets[end - w["context_start"]][1]
        example = raw[w["language"]][w["row"]]
        assert example["context"][c0:c1].strip() == example["answers"]["text"][0]
    assert len(found) == len(raw["russian"]) + len(raw["polish"])  # every answer fits whole in some window
    windows, examples = data.eval["polish"]
    assert len(examples.contexts) == 8 and all(len(g) == 2 for g in examples.golds)
    assert set(windows["row"]) == set(range(8))


def test_qa_data_problems_name_file_and_path(tiny_pretrained, tmp_path):  # noqa: F811
    from finetune.compute.data import DataError
    from finetune.compute.qa_data import prepare_qa_data
    from finetune.compute.tokenizer import load_tokenizer

    folder = write_squad(tmp_path / "ru", "russian")
    lines = (folder / "train.jsonl").read_text(encoding="utf-8").splitlines()
    import json

    bad = json.loads(lines[0])
    bad["answers"]["answer_start"] = [0]
    (folder / "train.jsonl").write_text("\n".join([json.dumps(bad, ensure_ascii=False)] + lines[1:]) + "\n",
                                        encoding="utf-8")
    config = {"id": "t", "model_type": "normal", "train_languages": ["russian"], "eval_languages": ["russian"],
              "data": {"cache_dir": str(tmp_path / "cache")},
              "datasets": {"russian": entry(folder, "question-answering", "russian")}}
    with pytest.raises(DataError) as e:
        prepare_qa_data(config, load_tokenizer(tiny_pretrained[1]), 64, doc_stride=16)
    [p] = e.value.problems
    assert p.path == "$.datasets.russian.eval_feature" and "is not at answer_start 0" in p.message


def test_ipa_qa_trial_data_and_causal_lm_chunks(tiny_pretrained, tmp_path):  # noqa: F811
    from finetune.compute.lm_data import prepare_lm_data
    from finetune.compute.qa_data import prepare_qa_data
    from finetune.compute.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_pretrained[1])
    config = {"id": "t", "model_type": "ipa", "train_languages": ["polish"], "eval_languages": ["polish"],
              "data": {"cache_dir": str(tmp_path / "cache")},
              "datasets": {"polish": entry(write_squad(tmp_path / "pl", "polish"), "question-answering", "polish")}}
    data = prepare_qa_data(config, tok, 64, doc_stride=16)
    windows, examples = data.eval["polish"]
    for ctx, golds in zip(examples.contexts, examples.golds, strict=True):
        assert all(g in ctx for g in golds) and not any(c in ctx for c in "ąęłńśźż")  # IPA, answers inside

    lm = {"id": "t", "model_type": "normal", "train_languages": ["polish"], "eval_languages": ["russian"],
          "data": {"cache_dir": str(tmp_path / "cache")},
          "datasets": {lang: entry(write_text(tmp_path / f"text-{lang}", lang), "causal-lm", lang)
                       for lang in ("polish", "russian")}}
    chunks = prepare_lm_data(lm, tok, 64)
    train = chunks["polish"]["train"]
    assert set(train["length"]) == {64} and len(train) > 5
    texts = (tmp_path / "text-polish" / "train.txt").read_text(encoding="utf-8").splitlines()
    stream = [t for text in texts for t in tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert [t for c in train["input_ids"] for t in c] == stream[:64 * len(train)]
    assert set(chunks["russian"]) == {"eval", "test"} or set(chunks["russian"]) == {"eval"}
