"""Extractive question answering: windows over long contexts and n-best answer search.

A model input is ``question tokens + [eos] + context window`` (the question first, so every
context token of the causal model has seen it). The question is cut to at most half the block;
the rest of the block holds the context. A context longer than that is covered by overlapping
windows: consecutive windows share ``doc_stride`` tokens (as ``doc_stride`` in transformers'
``run_qa.py``), at most half a window. A window that does not hold the whole answer is trained
to point at ``NULL_POSITION`` (token 0, the fixed "no answer here" position) with both its start
and end logits.

At evaluation, ``best_spans`` looks at each window's ``top_k`` best start and ``top_k`` best end
positions inside the context, keeps the pairs with start <= end that are at most
``max_answer_length`` tokens long, scores them by start + end logit, and returns the best over
all windows of the example, mapped back to the context's characters through the token offsets.

Everything here is plain Python on lists (and numpy for the logits): no torch, no tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NULL_POSITION = 0


@dataclass(frozen=True)
class Window:
    """One model input over a slice of one example's context."""

    input_ids: list[int]
    context_start: int  # index in input_ids of the window's first context token
    offsets: list[tuple[int, int]]  # character span in the context of each context token of the window
    start_position: int  # answer's first token in input_ids, or NULL_POSITION
    end_position: int  # answer's last token in input_ids, or NULL_POSITION

    @property
    def context_end(self) -> int:  # exclusive
        return self.context_start + len(self.offsets)


def window_ranges(n_tokens: int, capacity: int, doc_stride: int | None) -> list[tuple[int, int]]:
    """Token ranges ``[begin, end)`` of the windows over a context of ``n_tokens`` tokens.

    ``doc_stride`` is the overlap of consecutive windows; None means a quarter of the window,
    and it is capped at half the window so the windows always advance.
    """
    if capacity < 1:
        raise ValueError(f"no room for the context (capacity {capacity})")
    overlap = capacity // 4 if doc_stride is None else min(int(doc_stride), capacity // 2)
    step = max(1, capacity - overlap)
    ranges = []
    begin = 0
    while True:
        end = min(n_tokens, begin + capacity)
        ranges.append((begin, end))
        if end >= n_tokens:
            return ranges
        begin += step


def answer_tokens(offsets: Sequence[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """First and last token (indices into ``offsets``) covering characters ``[char_start, char_end)``."""
    first = last = None
    for i, (s, e) in enumerate(offsets):
        if e <= char_start or s >= char_end or e <= s:
            continue
        if first is None:
            first = i
        last = i
    return None if first is None else (first, last)  # type: ignore[return-value]


def make_windows(
    question_ids: Sequence[int],
    context_ids: Sequence[int],
    context_offsets: Sequence[tuple[int, int]],
    *,
    block_size: int,
    sep_id: int,
    doc_stride: int | None,
    answer: tuple[int, int] | None = None,
) -> list[Window]:
    """The windows of one example; ``answer`` is its character span ``[start, end)`` (training)."""
    question = list(question_ids)[: max(1, block_size // 2)]
    head = question + [sep_id]
    capacity = block_size - len(head)
    span = answer_tokens(context_offsets, *answer) if answer is not None else None
    windows = []
    for begin, end in window_ranges(len(context_ids), capacity, doc_stride):
        start = end_ = NULL_POSITION
        if span is not None and begin <= span[0] and span[1] < end:
            start, end_ = len(head) + span[0] - begin, len(head) + span[1] - begin
        windows.append(Window(
            input_ids=head + list(context_ids[begin:end]),
            context_start=len(head),
            offsets=[(int(s), int(e)) for s, e in context_offsets[begin:end]],
            start_position=start,
            end_position=end_,
        ))
    return windows


@dataclass(frozen=True)
class Span:
    text: str
    score: float
    start: int  # character offsets in the context
    end: int


def best_spans(
    windows: Sequence[tuple[Any, Any, int, Sequence[tuple[int, int]]]],
    context: str,
    *,
    top_k: int,
    max_answer_length: int,
) -> list[Span]:
    """The best answers of one example, best first (at most ``top_k``; ties keep window order).

    ``windows`` holds, per window, ``(start_logits, end_logits, context_start, offsets)`` with
    the logits over the whole input (``len >= context_start + len(offsets)``).
    """
    import numpy as np

    found: dict[tuple[int, int], Span] = {}
    for start_logits, end_logits, context_start, offsets in windows:
        n = len(offsets)
        if n == 0:
            continue
        s_log = np.asarray(start_logits, dtype=np.float64)[context_start:context_start + n]
        e_log = np.asarray(end_logits, dtype=np.float64)[context_start:context_start + n]
        # stable sort: equal logits keep the earlier token
        starts = np.argsort(-s_log, kind="stable")[:top_k]
        ends = np.argsort(-e_log, kind="stable")[:top_k]
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                c0, c1 = offsets[s][0], offsets[e][1]
                while c0 < c1 and context[c0].isspace():  # byte-level BPE tokens carry their space
                    c0 += 1
                score = float(s_log[s] + e_log[e])
                old = found.get((c0, c1))
                if old is None or score > old.score:
                    found[(c0, c1)] = Span(context[c0:c1], score, c0, c1)
    ranked = sorted(found.values(), key=lambda sp: -sp.score)  # sorted is stable
    return ranked[:top_k]


def best_answer(windows: Sequence[tuple[Any, Any, int, Sequence[tuple[int, int]]]], context: str, *,
                top_k: int, max_answer_length: int) -> str:
    """The text of the best span, or "" when no window has a valid one."""
    spans = best_spans(windows, context, top_k=top_k, max_answer_length=max_answer_length)
    return spans[0].text if spans else ""
