"""SQuAD answers: reading and checking them, and IPA that keeps every answer a substring of its context.

IPA (``model_type: ipa`` without ``-phoneme`` columns): the context is cut at every answer's
start and end, moved out to word boundaries, each piece transcribed on its own and the pieces
joined as the original was (a space where it had whitespace). So every answer's IPA is exactly
the IPA text between its recorded ``answer_start`` and ``answer_start + len(text)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from finetune.errors import Problem

if TYPE_CHECKING:
    from datasets import Dataset

# Bump when the IPA of the same context and answers changes (keys the cached transcriptions).
QA_IPA_REVISION = 1

def answers_of(value: Any) -> tuple[list[str], list[int]]:
    """``(texts, starts)`` of a SQuAD answers value; ValueError when it is not one."""
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise ValueError(f'expected {{"text": [...], "answer_start": [...]}}, got {value!r:.80}')
    texts, starts = value["text"], value["answer_start"]
    if isinstance(texts, str):
        texts, starts = [texts], [starts]
    texts, starts = list(texts or []), list(starts or [])
    if len(texts) != len(starts):
        raise ValueError(f"{len(texts)} answer texts but {len(starts)} answer_start values")
    return [str(t) for t in texts], [int(s) for s in starts]


def answer_problems(ds: Dataset, column: str, context_column: str, *, label: str, where: str, role: str,
                    limit: int = 5) -> list[Problem]:
    """Rows whose answers column is not SQuAD's or whose answer is not at its offset in the context."""
    problems = []
    for i, (value, context) in enumerate(zip(ds[column], ds[context_column], strict=True)):
        try:
            texts, starts = answers_of(value)
        except ValueError as e:
            problems.append(Problem(label, f"{where}.eval_feature", f"split {role}, row {i}: {e}"))
        else:
            for t, s in zip(texts, starts, strict=True):
                if str(context or "")[s:s + len(t)] != t:
                    problems.append(Problem(label, f"{where}.eval_feature",
                                            f"split {role}, row {i}: answer {t!r} is not at answer_start {s} of the context"))
                    break
        if len(problems) >= limit:
            break
    return problems


# --- IPA that keeps the answers ------------------------------------------------------------------


def _is_word(c: str) -> bool:
    return c.isalnum() or c in "'’-" or (0x300 <= ord(c) <= 0x36F)


def word_boundary_cuts(context: str, spans: Sequence[tuple[int, int]]) -> list[int]:
    """Cut points for ``spans`` (char ``[start, end)``), moved outwards to word boundaries."""
    cuts = {0, len(context)}
    for start, end in spans:
        while 0 < start < len(context) and _is_word(context[start - 1]) and _is_word(context[start]):
            start -= 1
        while 0 < end < len(context) and _is_word(context[end - 1]) and _is_word(context[end]):
            end += 1
        cuts.update((start, end))
    return sorted(c for c in cuts if 0 <= c <= len(context))


def transcribe_with_answers(
    contexts: Sequence[str], answers: Sequence[tuple[Sequence[str], Sequence[int]]], espeak: str, *, transcribe=None,
) -> tuple[list[str], list[dict[str, list[Any]]]]:
    """IPA contexts and their SQuAD answers in IPA (texts and ``answer_start``), see the module doc.

    ``transcribe`` (texts, voice) -> IPA texts defaults to ``finetune.compute.ipa.transcribe``.
    """
    if transcribe is None:
        from finetune.compute.ipa import transcribe
    plans = []
    pieces: list[str] = []
    for context, (texts, starts) in zip(contexts, answers, strict=True):
        context = context or ""
        spans = [(s, s + len(t)) for t, s in zip(texts, starts, strict=True)]
        cuts = word_boundary_cuts(context, spans)
        segs = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if a < b]
        plans.append((context, spans, segs, len(pieces)))
        pieces += [context[a:b] for a, b in segs]
    ipa_pieces = transcribe(pieces, espeak) if pieces else []
    out_contexts, out_answers = [], []
    for context, spans, segs, first in plans:
        text = ""
        where: dict[int, int] = {}  # original cut -> position in the IPA text
        for k, (a, b) in enumerate(segs):
            piece = ipa_pieces[first + k].strip()
            spaced = a > 0 and (context[a - 1].isspace() or context[a].isspace())
            if piece and text and spaced:
                text += " "
            where[a] = len(text)
            text += piece
            where[b] = len(text)
        where.setdefault(0, 0)
        out_contexts.append(text)
        texts, starts = [], []
        for s, e in spans:
            cuts = word_boundary_cuts(context, [(s, e)])
            lo = max(c for c in cuts if c <= s)
            hi = min(c for c in cuts if c >= e)
            i0, i1 = where.get(lo, 0), where.get(hi, len(text))
            while i0 < i1 and text[i0].isspace():
                i0 += 1
            texts.append(text[i0:i1])
            starts.append(i0)
        out_answers.append({"text": texts, "answer_start": starts})
    return out_contexts, out_answers
