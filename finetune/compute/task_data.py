"""A trial's data, whatever its task type: the one entry point the trainer and prefetch call."""

from __future__ import annotations

import os
from typing import Any


def prepare_task_data(trial_config: dict[str, Any], tokenizer: Any, block_size: int, *,
                      cache_dir: str | os.PathLike[str] | None = None, source: str | None = None) -> Any:
    """``prepare_trial_data``, ``qa_data.prepare_qa_data`` or ``lm_data.prepare_lm_data``, by task type."""
    from finetune.compute.data import trial_task_type

    kind = trial_task_type(trial_config)
    if kind == "question-answering":
        from finetune.compute.qa_data import prepare_qa_data

        doc_stride = (trial_config.get("hyperparameters") or {}).get("doc_stride")
        return prepare_qa_data(trial_config, tokenizer, block_size, doc_stride=doc_stride, cache_dir=cache_dir,
                               source=source)
    if kind == "causal-lm":
        from finetune.compute.lm_data import prepare_lm_data

        return prepare_lm_data(trial_config, tokenizer, block_size, cache_dir=cache_dir, source=source)
    from finetune.compute.data import prepare_trial_data

    return prepare_trial_data(trial_config, tokenizer, block_size, cache_dir=cache_dir, source=source)
