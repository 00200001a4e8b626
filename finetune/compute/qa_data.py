"""Question-answering datasets: SQuAD-style rows -> model windows, and IPA that keeps answer spans.

A row has a question column, a context column (the entry's ``train_features``, in that order)
and a SQuAD answers column (``eval_feature``): ``{"text": [...], "answer_start": [...]}``,
character offsets into the context. Training uses each row's first answer; evaluation keeps
every gold answer.

IPA (``model_type: ipa`` without ``-phoneme`` columns): the context is cut at every answer's
start and end, moved out to word boundaries, each piece transcribed on its own and the pieces
joined as the original was (a space where it had whitespace). So every answer's IPA is exactly
the IPA text between its recorded ``answer_start`` and ``answer_start + len(text)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import Problem

if TYPE_CHECKING:
    from datasets import Dataset

# Bump when the windows of the same input change (keys the cached windows).
QA_ENCODING_REVISION = 1


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


def add_qa_phoneme_columns(ds: Dataset, entry: dict[str, Any], espeak: str, *, cache_dir: Path,
                           batch_size: int = 64) -> Dataset:
    """``question-phoneme``, ``context-phoneme`` and ``<answers>-phoneme`` columns (cached like all maps)."""
    from finetune.compute import ipa
    from finetune.compute.data import PHONEME_SUFFIX, _cached_map, _digest, features_of

    question, context = features_of(entry)
    answers = entry.get("eval_feature", "answers")
    key = _digest("qa-ipa", QA_ENCODING_REVISION, ds._fingerprint, question, context, answers,
                  ipa.transcription_id(espeak))

    def transcribe_batch(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        golds = [answers_of(v) for v in batch[answers]]
        contexts, ipa_answers = transcribe_with_answers(batch[context], golds, espeak)
        questions = ipa.transcribe(["" if q is None else str(q) for q in batch[question]], espeak)
        return {question + PHONEME_SUFFIX: questions, context + PHONEME_SUFFIX: contexts,
                answers + PHONEME_SUFFIX: ipa_answers}

    return _cached_map(ds, transcribe_batch, key=key, cache_dir=cache_dir, batch_size=batch_size,
                       desc=f"IPA with answers ({espeak})")


# --- windows ------------------------------------------------------------------------------------


@dataclass
class QAExamples:
    """What evaluation needs besides the windows: each example's context and gold answers."""

    contexts: list[str]
    golds: list[list[str]]


def encode_qa(
    ds: Dataset,
    *,
    question_column: str,
    context_column: str,
    answers_column: str,
    tokenizer: Any,
    block_size: int,
    doc_stride: int | None,
    language: str,
    cache_dir: Path,
) -> Dataset:
    """One row per window: input_ids, labels ([start, end]), length, language, row, context_start, offsets."""
    from finetune.compute.data import _cached_map, _digest, tokenizer_id
    from finetune.compute.qa import make_windows

    key = _digest("qa", QA_ENCODING_REVISION, ds._fingerprint, question_column, context_column, answers_column,
                  tokenizer_id(tokenizer), block_size, doc_stride, language)
    sep = int(tokenizer.eos_token_id)

    def encode_batch(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        questions = ["" if q is None else str(q) for q in batch[question_column]]
        contexts = ["" if c is None else str(c) for c in batch[context_column]]
        q_ids = tokenizer(questions, add_special_tokens=False)["input_ids"]
        enc = tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True)
        out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "length", "language", "row",
                                                     "context_start", "offsets")}
        for j, row in enumerate(indices):
            texts, starts = answers_of(batch[answers_column][j])
            answer = (starts[0], starts[0] + len(texts[0])) if texts else None
            for w in make_windows(q_ids[j], enc["input_ids"][j], enc["offset_mapping"][j], block_size=block_size,
                                  sep_id=sep, doc_stride=doc_stride, answer=answer):
                out["input_ids"].append(w.input_ids)
                out["labels"].append([w.start_position, w.end_position])
                out["length"].append(len(w.input_ids))
                out["language"].append(language)
                out["row"].append(row)
                out["context_start"].append(w.context_start)
                out["offsets"].append([list(o) for o in w.offsets])
        return out

    return _cached_map(ds, encode_batch, key=key, cache_dir=cache_dir, with_indices=True, batch_size=200,
                       remove_columns=ds.column_names, desc=f"QA windows ({language})")


def examples_of(ds: Dataset, context_column: str, answers_column: str) -> QAExamples:
    contexts = ["" if c is None else str(c) for c in ds[context_column]]
    golds = [answers_of(v)[0] for v in ds[answers_column]]
    return QAExamples(contexts, golds)


@dataclass
class QATrialData:
    train: Dataset | None  # windows of the train languages' train splits
    eval: dict[str, tuple[Dataset, QAExamples]]  # language -> (windows, examples)
    test: dict[str, tuple[Dataset, QAExamples]]


def qa_columns(entry: dict[str, Any], model_type: str) -> tuple[str, str, str]:
    """(question, context, answers) column names; the ``-phoneme`` ones for ipa trials."""
    from finetune.compute.data import PHONEME_SUFFIX, features_of

    question, context = features_of(entry)
    answers = entry.get("eval_feature", "answers")
    if model_type == "ipa":
        return question + PHONEME_SUFFIX, context + PHONEME_SUFFIX, answers + PHONEME_SUFFIX
    return question, context, answers


def prepare_qa_data(trial_config: dict[str, Any], tokenizer: Any, block_size: int, *, doc_stride: int | None,
                    cache_dir: Any = None, source: str | None = None) -> QATrialData:
    """Load, transcribe (ipa) and window every QA dataset of a trial; DataError lists every problem."""
    from datasets import concatenate_datasets

    from finetune.compute.data import DataError, config_file, load_trial_raw, resolve_cache_dir

    source = source or config_file(trial_config)
    cache = resolve_cache_dir(trial_config, cache_dir)
    model_type = trial_config.get("model_type", "normal")
    raw, problems = load_trial_raw(trial_config, cache_dir=cache, source=source)
    if problems:
        raise DataError(problems=problems)
    windows: dict[str, dict[str, tuple[Dataset, QAExamples]]] = {}
    for lang, splits in raw.items():
        q, c, a = qa_columns(trial_config["datasets"][lang], model_type)
        for role, ds in splits.items():
            enc = encode_qa(ds, question_column=q, context_column=c, answers_column=a, tokenizer=tokenizer,
                            block_size=block_size, doc_stride=doc_stride, language=lang, cache_dir=cache)
            windows.setdefault(lang, {})[role] = (enc, examples_of(ds, c, a))
    parts = [windows[lang]["train"][0] for lang in trial_config.get("train_languages", [])
             if "train" in windows.get(lang, {})]
    evals = trial_config.get("eval_languages", [])
    return QATrialData(
        train=concatenate_datasets(parts) if parts else None,
        eval={lang: windows[lang]["eval"] for lang in evals if "eval" in windows.get(lang, {})},
        test={lang: windows[lang]["test"] for lang in evals if "test" in windows.get(lang, {})},
    )
