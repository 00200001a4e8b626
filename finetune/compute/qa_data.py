"""Question-answering datasets: SQuAD-style rows -> model windows, and IPA that keeps answer spans.

A row has a question column, a context column (the entry's ``train_features``, in that order)
and a SQuAD answers column (``eval_feature``): ``{"text": [...], "answer_start": [...]}``,
character offsets into the context. Training uses each row's first answer; evaluation keeps
every gold answer.
IPA columns that keep the answers are made by ``finetune.compute.data`` with
``finetune.compute.qa_answers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.compute.qa_answers import answers_of

if TYPE_CHECKING:
    from datasets import Dataset

# Bump when the windows of the same input change (keys the cached windows).
QA_ENCODING_REVISION = 1


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
    from finetune.compute.data import _cached_map, tokenizer_id
    from finetune.compute.qa import make_windows
    from finetune.login.inputs import digest

    key = digest("qa", QA_ENCODING_REVISION, ds._fingerprint, question_column, context_column, answers_column,
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

    from finetune.compute.data import load_raw_trial_data

    raw = load_raw_trial_data(trial_config, cache_dir=cache_dir, source=source)
    windows: dict[str, dict[str, tuple[Dataset, QAExamples]]] = {}
    for lang, splits in raw.splits.items():
        q, c, a = qa_columns(trial_config["datasets"][lang], raw.model_type)
        for role, ds in splits.items():
            enc = encode_qa(ds, question_column=q, context_column=c, answers_column=a, tokenizer=tokenizer,
                            block_size=block_size, doc_stride=doc_stride, language=lang, cache_dir=raw.cache)
            windows.setdefault(lang, {})[role] = (enc, examples_of(ds, c, a))
    parts = [windows[lang]["train"][0] for lang in trial_config.get("train_languages", [])
             if "train" in windows.get(lang, {})]
    evals = trial_config.get("eval_languages", [])
    return QATrialData(
        train=concatenate_datasets(parts) if parts else None,
        eval={lang: windows[lang]["eval"] for lang in evals if "eval" in windows.get(lang, {})},
        test={lang: windows[lang]["test"] for lang in evals if "test" in windows.get(lang, {})},
    )
