"""Question answering: windows, n-best search against hand-computed answers, SQuAD metric, QA head and pipeline."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from nanogpt_fixtures import tiny_pretrained, write_nanogpt_checkpoint  # noqa: F401

from finetune.compute.metrics import normalize_answer, squad_metrics, token_f1
from finetune.compute.qa import (
    NULL_POSITION,
    answer_tokens,
    best_answer,
    best_spans,
    make_windows,
    window_ranges,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- windows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, capacity, stride, expected", [
    (5, 8, 2, [(0, 5)]),
    (8, 8, 2, [(0, 8)]),
    (10, 4, 1, [(0, 4), (3, 7), (6, 10)]),
    (10, 4, 3, [(0, 4), (2, 6), (4, 8), (6, 10)]),  # overlap capped at half a window
    (9, 4, None, [(0, 4), (3, 7), (6, 9)]),  # None: a quarter window
])
def test_window_ranges(n, capacity, stride, expected):
    assert window_ranges(n, capacity, stride) == expected


def test_windows_label_the_answer_only_where_it_fits_whole():
    # context "aa bb cc dd ee ff": one token per word, offsets by hand
    offsets = [(0, 2), (2, 5), (5, 8), (8, 11), (11, 14), (14, 17)]
    ctx_ids = [10, 11, 12, 13, 14, 15]
    # answer "cc dd" = characters 6..11 (tokens 2 and 3, with their leading spaces)
    windows = make_windows([1, 2], ctx_ids, offsets, block_size=7, sep_id=0, doc_stride=2,
                           answer=(6, 11))
    # head = [1, 2, 0] -> capacity 4, step 2: windows over tokens [0,4), [2,6)
    assert [w.input_ids for w in windows] == [[1, 2, 0, 10, 11, 12, 13], [1, 2, 0, 12, 13, 14, 15]]
    assert [(w.start_position, w.end_position) for w in windows] == [(5, 6), (3, 4)]
    short = make_windows([1, 2], ctx_ids, offsets, block_size=6, sep_id=0, doc_stride=1, answer=(6, 11))
    # capacity 3, step 2: [0,3) holds only "cc", [2,5) holds both, [4,6) neither
    assert [(w.start_position, w.end_position) for w in short] == [(NULL_POSITION, NULL_POSITION), (3, 4),
                                                                    (NULL_POSITION, NULL_POSITION)]
    assert answer_tokens(offsets, 6, 11) == (2, 3)
    assert answer_tokens(offsets, 100, 101) is None


def test_n_best_aggregates_over_windows_by_hand():
    context = "aa bb cc dd ee ff"
    offsets = [(0, 2), (2, 5), (5, 8), (8, 11), (11, 14), (14, 17)]
    # window 1 holds tokens 0-3 at input positions 3..6, window 2 tokens 2-5 at 3..6
    w1_start = [9, 0, 0, 1.0, 2.0, 0.5, 0.0]
    w1_end = [9, 0, 0, 0.0, 0.5, 1.0, 3.0]
    w2_start = [9, 0, 0, 0.2, 0.1, 4.0, 0.0]
    w2_end = [9, 0, 0, 0.0, 0.3, 0.2, 2.5]
    windows = [(w1_start, w1_end, 3, offsets[0:4]), (w2_start, w2_end, 3, offsets[2:6])]
    # by hand, top_k=2, max_answer_length=3 tokens:
    # window 1: starts {bb 2.0, aa 1.0}, ends {dd 3.0, cc 1.0}: bb..dd 5.0, bb..cc 3.0, aa..cc 2.0
    #           (aa..dd is 4 tokens: too long)
    # window 2: starts {ee 4.0, cc 0.2}, ends {ff 2.5, dd 0.3}: ee..ff 6.5, cc..ff 2.7 (3 tokens), cc..dd 0.5
    # (the 9s at position 0 are outside the context and never chosen)
    spans = best_spans(windows, context, top_k=2, max_answer_length=3)
    assert [(s.text, s.score) for s in spans] == [("ee ff", 6.5), ("bb cc dd", 5.0)]
    assert (spans[0].start, spans[0].end) == (12, 17)
    assert best_answer(windows, context, top_k=1, max_answer_length=2) == "ee ff"
    # max_answer_length 1 (single tokens): no top-2 start is also a top-2 end in either window
    assert best_answer(windows, context, top_k=2, max_answer_length=1) == ""
    # top_k 3: window 1 bb..bb 2.5, cc..cc 1.5; window 2 ee..ee 4.0 + 0.2 = 4.2 wins
    spans = best_spans(windows, context, top_k=3, max_answer_length=1)
    assert [(s.text, round(s.score, 6)) for s in spans] == [("ee", 4.2), ("bb", 2.5), ("cc", 1.5)]
    assert best_answer([], context, top_k=2, max_answer_length=3) == ""


# --- SQuAD metric --------------------------------------------------------------------------------


def test_normalisation_and_known_values():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("«Война и мир» — роман") == "война и мир роман"
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3))
    m = squad_metrics(
        ["Paris", "in 1889", "Tolstoy", ""],
        [["Paris", "Paris, France"], ["1889"], ["Leo Tolstoy", "Lev Tolstoy"], ["something"]],
    )
    # EM: 1, 0, 0, 0 -> 0.25; F1: 1, 2/3 (in+1889 vs 1889: p=1/2 r=1), 2/3 (p=1 r=1/2), 0
    assert m["exact_match"] == pytest.approx(0.25)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 0) / 4)
    assert squad_metrics(["x"], [[]]) == {"exact_match": 0.0, "f1": 0.0}
    assert squad_metrics([""], [[]], loss=1.5) == {"loss": 1.5, "exact_match": 1.0, "f1": 1.0}


# --- model head and pipeline ---------------------------------------------------------------------


def test_qa_head_logits_loss_and_padding(tmp_path):
    import torch

    from finetune.compute.hf import NanoGPTForQuestionAnswering

    ckpt = tmp_path / "m" / "ckpt.pt"
    write_nanogpt_checkpoint(ckpt, block_size=32, vocab_size=100)
    model = NanoGPTForQuestionAnswering.from_nanogpt(ckpt).eval()
    ids = torch.randint(1, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    out = model(ids, attention_mask=mask, start_positions=torch.tensor([3, 0]), end_positions=torch.tensor([4, 0]))
    assert out.start_logits.shape == out.end_logits.shape == (2, 9)
    assert torch.isinf(out.start_logits[1, 6:]).all() and torch.isfinite(out.start_logits[1, :6]).all()
    # causal: the padded row's real positions equal the unpadded row's
    alone = model(ids[1:, :6])
    torch.testing.assert_close(out.start_logits[1, :6], alone.start_logits[0], rtol=1e-5, atol=1e-6)
    expected = (torch.nn.functional.cross_entropy(out.start_logits, torch.tensor([3, 0]))
                + torch.nn.functional.cross_entropy(out.end_logits, torch.tensor([4, 0]))) / 2
    torch.testing.assert_close(out.loss, expected)


def test_pipeline_question_answering_on_a_saved_model(tiny_pretrained, tmp_path):  # noqa: F811
    from transformers import AutoModelForQuestionAnswering, pipeline

    from finetune.compute.convert import convert
    from finetune.compute.qa_pipeline import NanoGPTQuestionAnsweringPipeline

    ckpt, prefix = tiny_pretrained
    out = tmp_path / "qa"
    convert(ckpt, out, task="question-answering", tokenizer=prefix)
    model = AutoModelForQuestionAnswering.from_pretrained(str(out))
    assert type(model).__name__ == "NanoGPTForQuestionAnswering"
    context = "Москва — столица России. " * 12 + "Варшава — столица Польши."  # longer than the block (64)
    qa = pipeline("question-answering", model=str(out), pipeline_class=NanoGPTQuestionAnsweringPipeline)
    answer = qa(question="Какая столица Польши?", context=context)
    assert set(answer) == {"answer", "score", "start", "end"}
    assert answer["answer"] == context[answer["start"]:answer["end"]] and answer["answer"]
    several = qa(question="Какая столица Польши?", context=context, top_k=3, max_answer_length=4)
    assert len(several) == 3 and several[0]["score"] >= several[1]["score"] >= several[2]["score"]
    assert several[0]["answer"] == answer["answer"] or several[0]["score"] > 0

    # the saved directory names its pipeline: no finetune import, trust_remote_code finds it
    code = (
        "from transformers import pipeline\n"
        f"qa = pipeline('question-answering', model={str(out)!r}, trust_remote_code=True)\n"
        f"a = qa(question='Какая столица Польши?', context={context!r})\n"
        f"print(type(qa).__name__, a['answer'] == {answer['answer']!r})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["NanoGPTQuestionAnsweringPipeline", "True"]


def test_best_spans_reads_numpy_windows():
    s = np.array([0.0, 5.0, 1.0])
    e = np.array([0.0, 1.0, 5.0])
    assert best_answer([(s, e, 1, [(0, 3), (3, 8)])], "abc defg", top_k=2, max_answer_length=2) == "abc defg"
