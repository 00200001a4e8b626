"""Causal-LM datasets: documents packed into ``block_size`` chunks without padding.

Each document (the entry's ``train_features`` joined by the separator) is tokenized and followed
by eos; the token stream of a split is cut into consecutive chunks of exactly ``block_size``
tokens (transformers' ``run_clm.py`` ``group_texts``). The tail shorter than a block is dropped,
unless the split holds less than one block, which then is one short chunk. The model predicts
every token of a chunk from the ones before it (``block_size - 1`` targets per chunk).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

# Bump when the chunks of the same input change (keys the cached chunks).
LM_ENCODING_REVISION = 1


def pack(documents: Sequence[Sequence[int]], block_size: int, eos_id: int) -> list[list[int]]:
    """Documents (token ids) -> chunks of ``block_size`` tokens, each document followed by eos."""
    stream: list[int] = []
    for doc in documents:
        stream.extend(doc)
        stream.append(eos_id)
    if len(stream) < block_size:
        return [stream] if len(stream) > 1 else []
    return [stream[i:i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


def encode_lm(
    ds: Dataset,
    *,
    columns: Sequence[str],
    tokenizer: Any,
    block_size: int,
    separator: str,
    language: str,
    cache_dir: Path,
) -> Dataset:
    """The split as packed chunks: columns input_ids, labels (0, unused), length, language, row (chunk index).

    The token ids of the documents are cached like the other encodings; packing them is a
    cheap pass in Python, done on every load.
    """
    from datasets import Dataset

    from finetune.compute.data import _cached_map, tokenizer_id
    from finetune.login.inputs import digest

    key = digest("lm-tokens", LM_ENCODING_REVISION, ds._fingerprint, list(columns), tokenizer_id(tokenizer),
                  separator)

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        n = len(batch[columns[0]])
        texts = [separator.join("" if batch[c][i] is None else str(batch[c][i]) for c in columns) for i in range(n)]
        return {"ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    tokens = _cached_map(ds, tokenize, key=key, cache_dir=cache_dir, batch_size=1000,
                         remove_columns=ds.column_names, desc=f"tokenize ({language})")
    chunks = pack(tokens["ids"], block_size, int(tokenizer.eos_token_id))
    return Dataset.from_dict({"input_ids": chunks, "labels": [0] * len(chunks), "length": [len(c) for c in chunks],
                              "language": [language] * len(chunks), "row": list(range(len(chunks)))})


def prepare_lm_data(trial_config: dict[str, Any], tokenizer: Any, block_size: int, *, cache_dir: Any = None,
                    separator: str | None = None, source: str | None = None) -> dict[str, dict[str, Dataset]]:
    """language -> role -> packed chunks, for every language of a trial; DataError lists every problem."""
    from finetune.compute.data import input_columns, load_raw_trial_data

    raw = load_raw_trial_data(trial_config, cache_dir=cache_dir, source=source)
    sep = separator if separator is not None else (tokenizer.eos_token or " ")
    return {lang: {role: encode_lm(ds, columns=input_columns(trial_config["datasets"][lang], raw.model_type),
                                   tokenizer=tokenizer, block_size=block_size, separator=sep, language=lang,
                                   cache_dir=raw.cache)
                   for role, ds in splits.items()}
            for lang, splits in raw.splits.items()}
