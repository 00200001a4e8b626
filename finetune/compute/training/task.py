"""The task-specific part of training: data, model head, how a batch becomes a loss, how
predictions become metrics.

The loop (``loop.py``) is task-agnostic: it asks a task for its data and model, calls
:meth:`ClassificationTask.forward` under autocast and :meth:`ClassificationTask.loss` for each
micro batch, and :meth:`predict`/:meth:`metrics` to evaluate. Another task (QA, causal LM, a
LoRA variant) is another class with the same methods, picked by :func:`task_for`.

The loss contract: :meth:`loss` returns the SUM over the micro batch's rows (or tokens); the loop
divides by the rows of the global batch, so one process with accumulation and several processes
compute the same mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from finetune.compute.training.settings import Settings
from finetune.errors import ConfigError, Problem


class Rows:
    """Token ids and labels held as Python lists: no per-batch Arrow decoding in the loop."""

    def __init__(self, input_ids: list[list[int]], labels: list[int]):
        self.input_ids = input_ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}

    def lengths(self) -> list[int]:
        """Tokens per row (the length-grouped sampler and the token count use them)."""
        return [len(x) for x in self.input_ids]


def rows_of(dataset: Any, limit: int | None = None) -> Rows:
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    return Rows([list(x) for x in dataset["input_ids"]], [int(y) for y in dataset["labels"]])


def predict_batches(rows: Rows, batch_size: int, collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
                    forward: Callable[[dict[str, Any]], Any], post: Callable[[Any, dict[str, Any]], Any], *,
                    device: Any, autocast: Any, env: Any = None, lockstep: bool = False) -> list[tuple[list[int], Any]]:
    """``(row indices, post(forward(batch), batch))`` for every evaluation batch, in batch order, on every rank.

    The rows are cut into length-grouped batches (always the same ones); with ``env`` (a
    :class:`~finetune.compute.distributed.DistEnv` of several processes) each rank runs every
    ``world_size``-th batch and the results are gathered, so every batch's result is exactly the
    one a single process computes (the same batch, the same padding, the same kernels).
    ``lockstep`` (FSDP, whose forward is collective): every rank runs the same number of
    forwards, a rank without a batch left running the first one again and dropping its output.
    Both run under ``torch.inference_mode`` on the batch moved to ``device``, ``forward`` also
    under ``autocast``; what ``post`` returns crosses processes (numpy arrays, numbers).
    """
    import torch

    from finetune.compute import distributed as dist_env
    from finetune.compute.batching import LengthGroupedBatchSampler

    env = env or dist_env.DistEnv()
    batches = LengthGroupedBatchSampler(rows.lengths(), batch_size, shuffle=False).batches()
    parts = []
    with torch.inference_mode():
        for item in dist_env.shard(list(enumerate(batches)), env, even=lockstep):
            b, idx = item if item is not None else (None, batches[0])
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
            with autocast():
                output = forward(batch)
            if b is not None:
                parts.append((b, post(output, batch)))
    results = dist_env.gather_batches(parts, env, n_batches=len(batches))
    return list(zip(batches, results, strict=True))


@dataclass
class TaskData:
    train: Rows
    eval: dict[str, Rows]  # language -> rows
    test: dict[str, Rows]
    label_names: list[str]


class Task:
    """What every task shares: tokenizer and pad id, the padded batch, the logits forward, the dumps.

    A task class adds ``load_data``, ``build_model``, ``loss``, ``predict``, ``metrics`` and ``dump``
    (and overrides ``collate_fn``/``forward`` where its batches or outputs differ).
    """

    head_modules: tuple[str, ...] = ()  # modules that train beside LoRA adapters

    def __init__(self, config: dict[str, Any], settings: Settings, *, file: str):
        from finetune.compute import shared
        from finetune.compute.tokenizer import load_tokenizer

        self.config, self.s, self.file = config, settings, file
        self.hp = config.get("hyperparameters") or {}
        self.tokenizer = shared.cached("tokenizer", shared.tokenizer_key(config), lambda: load_tokenizer(config["tokenizer"]))
        tok = self.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        self.label_names: list[str] = []

    def cache_dir(self) -> Any:
        return (self.config.get("data") or {}).get("cache_dir")

    def collate_fn(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Rows -> a padded batch of tensors (picklable, for DataLoader workers)."""
        from finetune.compute.batching import collate

        return partial(collate, pad_id=self.pad_id)

    def forward(self, model: Any, batch: dict[str, Any]) -> Any:
        """The model's output for a batch on the device (the loop runs this under autocast)."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def dump_arrays(self, folder: Path, trial_id: str, language: str, split: str, **arrays: Any) -> None:
        """--dump-logits: one .npz per language and split (read by analysis.significance)."""
        import io

        import numpy as np

        from finetune.fileio import atomic_write_bytes
        from finetune.layout import logits_name

        buf = io.BytesIO()
        np.savez(buf, trial=np.array(trial_id), language=np.array(language), split=np.array(split), **arrays)
        atomic_write_bytes(folder / logits_name(trial_id, language, split), buf.getvalue())


class ClassificationTask(Task):
    """Sequence classification (SIB-200 topics): the last token's hidden state -> a linear head."""

    head_modules: tuple[str, ...] = ("score",)  # trains beside LoRA adapters

    # --- setup ------------------------------------------------------------------------------------
    def load_data(self, block_size: int, *, train: bool = True) -> TaskData:
        """The trial's rows; eval capped at ``max_eval_samples``. ``train=False`` (``finetune evaluate``):
        the config may have no train languages."""
        from finetune.compute import shared
        from finetune.compute.data import prepare_trial_data

        data = shared.cached("data", shared.data_key(self.config, block_size),
                             lambda: prepare_trial_data(self.config, self.tokenizer, block_size, cache_dir=self.cache_dir()))
        self.label_names = list(data.label_names)
        rows = rows_of(data.train) if data.train is not None else Rows([], [])
        if train and not len(rows):
            raise ConfigError(problems=[Problem(self.file, "$.train_languages", "no training rows")])
        cap = self.s.max_eval_samples
        return TaskData(train=rows, eval={lang: rows_of(ds, cap) for lang, ds in data.eval.items()},
                        test={lang: rows_of(ds) for lang, ds in data.test.items()}, label_names=self.label_names)

    def build_model(self, loaded: Any) -> Any:
        """The model with a fresh head (its initialisation draws from the global torch RNG)."""
        from finetune.compute.hf import NanoGPTForSequenceClassification

        model = NanoGPTForSequenceClassification.from_nanogpt(
            self.config["checkpoint"], len(self.label_names), loaded=loaded, dropout=self.s.dropout
        )
        model.config.pad_token_id = self.pad_id
        model.config.id2label = dict(enumerate(self.label_names))
        model.config.label2id = {name: i for i, name in enumerate(self.label_names)}
        return model

    # --- train ------------------------------------------------------------------------------------
    def loss(self, output: Any, batch: dict[str, Any]) -> Any:
        """Summed loss of the batch's rows, in float32 (outside autocast)."""
        import torch.nn.functional as F

        return F.cross_entropy(output.float(), batch["labels"], reduction="sum")

    # --- evaluate ---------------------------------------------------------------------------------
    def predict(self, model: Any, rows: Rows, *, device: Any, autocast: Any, env: Any = None,
                lockstep: bool = False) -> tuple[Any, Any]:
        """Logits ``(n, classes)`` in row order and labels, on every rank (sharded: :func:`predict_batches`)."""
        import numpy as np

        out = np.zeros((len(rows), len(self.label_names)), dtype=np.float32)
        for idx, logits in predict_batches(rows, self.s.eval_batch_size, self.collate_fn(), partial(self.forward, model),
                                           lambda output, batch: output.float().cpu().numpy(), device=device,
                                           autocast=autocast, env=env, lockstep=lockstep):
            out[idx] = logits
        return out, np.asarray(rows.labels, dtype=np.int64)

    def metrics(self, predictions: Any, labels: Any) -> dict[str, float]:
        from finetune.compute.metrics import classification_metrics

        return classification_metrics(predictions, labels)

    def dump(self, folder: Path, trial_id: str, language: str, split: str, predictions: Any, labels: Any) -> None:
        import numpy as np

        self.dump_arrays(folder, trial_id, language, split, logits=predictions, labels=labels,
                         label_names=np.array(self.label_names))
