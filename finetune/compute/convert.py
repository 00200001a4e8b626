"""nanoGPT ckpt.pt -> a Hugging Face model directory (safetensors, config, tokenizer).

The checkpoint is read safely and checked key by key (``finetune.compute.model.load_checkpoint``); the
directory is built in a temporary sibling and renamed into place, so ``OUT_DIR`` is either
absent or complete. With a tokenizer inside, the directory works with
``transformers.pipeline(...)`` and the Auto classes (after ``import finetune.compute.hf``, or with
``trust_remote_code=True`` anywhere finetune is installed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from finetune.errors import Problem, UsageError
from finetune.fileio import atomic_directory

TASKS = ("causal-lm", "classification", "question-answering")


@dataclass(frozen=True)
class ConvertReport:
    out_dir: Path
    task: str
    num_labels: int | None
    tokenizer: Path | None  # where the tokenizer came from; None: none saved
    parameters: int


def default_tokenizer(ckpt_path: str | os.PathLike[str]) -> Path | None:
    """nanoGPT's layout: ``models/NAME/ckpt.pt`` has its tokenizer at ``models/NAME-vocab.json``."""
    path = Path(ckpt_path).resolve()
    prefix = path if path.is_dir() else path.parent
    return prefix if Path(str(prefix) + "-vocab.json").is_file() else None


def _check_args(task: str, num_labels: int | None, labels: list[str] | None) -> list[Problem]:
    problems = []
    if task not in TASKS:
        problems.append(Problem("--task", "", f"must be one of {', '.join(TASKS)}, got {task!r}"))
    if task == "classification":
        if num_labels is None and not labels:
            problems.append(Problem("--num-labels", "", "required for --task classification (or give --labels)"))
        if num_labels is not None and num_labels < 1:
            problems.append(Problem("--num-labels", "", f"must be at least 1, got {num_labels}"))
        if labels and num_labels is not None and len(labels) != num_labels:
            problems.append(Problem("--labels", "", f"{len(labels)} labels but --num-labels {num_labels}"))
        if labels and len(set(labels)) != len(labels):
            problems.append(Problem("--labels", "", "labels must be distinct"))
    elif num_labels is not None or labels:
        problems.append(Problem("--num-labels", "", "only meaningful with --task classification"))
    return problems


def convert(
    ckpt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    task: str = "classification",
    num_labels: int | None = None,
    labels: list[str] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ConvertReport:
    """Write the HF directory for ``ckpt_path`` (see module doc); raises FinetuneError on bad input.

    ``tokenizer``: vocab/merges prefix, tokenizer.json or HF dir; default: the checkpoint's
    nanoGPT-layout sibling ``<dir>-vocab.json`` when it exists, else no tokenizer is saved.
    """
    problems = _check_args(task, num_labels, labels)
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        problems.append(Problem("OUT_DIR", "", f"{out} exists and is not empty; use --force to replace it"))
    tok_path = Path(tokenizer) if tokenizer is not None else default_tokenizer(ckpt_path)
    if tokenizer is not None:
        from finetune.compute.tokenizer import tokenizer_problems

        problems += tokenizer_problems(tokenizer, source="--tokenizer")
    if problems:
        raise UsageError(problems=problems)

    from finetune.compute.hf import (
        NanoGPTForCausalLM,
        NanoGPTForQuestionAnswering,
        NanoGPTForSequenceClassification,
    )
    from finetune.compute.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_path) if tok_path is not None else None
    overrides: dict = {}
    if tok is not None:
        overrides.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    if task == "classification":
        n = num_labels if num_labels is not None else len(labels or [])
        if labels:
            overrides.update(id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
        model = NanoGPTForSequenceClassification.from_nanogpt(ckpt_path, n, **overrides)
    elif task == "question-answering":
        n = None
        model = NanoGPTForQuestionAnswering.from_nanogpt(ckpt_path, **overrides)
    else:
        n = None
        model = NanoGPTForCausalLM.from_nanogpt(ckpt_path, **overrides)
    if tok is not None and len(tok) > model.config.vocab_size:
        raise UsageError(
            problems=[
                Problem("--tokenizer", "", f"{tok_path}: {len(tok)} tokens but the checkpoint's vocab_size is {model.config.vocab_size}")
            ]
        )
    if tok is not None:
        tok.model_max_length = model.config.block_size

    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
    return ConvertReport(out, task, n, tok_path, sum(p.numel() for p in model.parameters()))
