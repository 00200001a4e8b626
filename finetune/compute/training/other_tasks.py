"""Question answering and causal-LM fine-tuning: the same task interface as ``ClassificationTask``.

* ``QATask``: rows are context windows (``finetune.compute.qa_data``); the loss of a row is the
  mean of its start and end cross-entropies; evaluation runs every window, aggregates each
  example's windows with the n-best search (``top_k``, ``max_answer_length``) and scores the
  answers with SQuAD's exact match and F1 (``loss`` is the mean window loss).
* ``CausalLMTask``: rows are packed ``block_size`` chunks (``finetune.compute.lm_data``); the loss of
  a row is its mean next-token cross-entropy; evaluation reports the token-weighted mean loss and
  its perplexity.

Dumps (``--dump-logits``) hold per-example scores for ``finetune significance``: exact_match, f1
and the predicted answer per question; loss_sum and tokens per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from finetune.compute.training.settings import Settings
from finetune.compute.training.task import Rows, Task, TaskData
from finetune.errors import ConfigError, Problem


class QARows(Rows):
    """Windows: input ids, labels ``[start, end]``, and what maps them back to their example."""

    def __init__(self, input_ids: list[list[int]], labels: list[list[int]], rows: list[int] | None = None,
                 context_start: list[int] | None = None, offsets: list[list[list[int]]] | None = None,
                 examples: Any = None):
        super().__init__(input_ids, labels)  # type: ignore[arg-type]
        self.rows, self.context_start, self.offsets, self.examples = rows, context_start, offsets, examples


def qa_rows(dataset: Any, examples: Any = None, limit: int | None = None) -> QARows:
    if limit is not None and examples is not None and limit < len(examples.contexts):
        dataset = dataset.filter(lambda r: r < limit, input_columns="row")
        examples = type(examples)(examples.contexts[:limit], examples.golds[:limit])
    if examples is None:
        return QARows([list(x) for x in dataset["input_ids"]], [list(y) for y in dataset["labels"]])
    return QARows([list(x) for x in dataset["input_ids"]], [list(y) for y in dataset["labels"]],
                  list(dataset["row"]), list(dataset["context_start"]),
                  [[tuple(o) for o in offs] for offs in dataset["offsets"]], examples)


def collate_qa(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad the windows; labels are ``(batch, 2)`` start and end positions."""
    import torch

    from finetune.compute.batching import collate

    batch = collate([{"input_ids": f["input_ids"]} for f in features], pad_id)
    batch["labels"] = torch.as_tensor([list(f["labels"]) for f in features], dtype=torch.long)
    return batch


class QATask(Task):
    head_modules = ("qa_outputs",)

    def __init__(self, config: dict[str, Any], settings: Settings, *, file: str):
        super().__init__(config, settings, file=file)
        self.top_k = int(self.hp.get("top_k", 20))
        self.max_answer_length = int(self.hp.get("max_answer_length", 30))
        self.doc_stride = self.hp.get("doc_stride")

    def load_data(self, block_size: int, *, train: bool = True) -> TaskData:
        from finetune.compute import shared
        from finetune.compute.qa_data import prepare_qa_data

        data = shared.cached("data", shared.data_key(self.config, block_size, task="qa", doc_stride=self.doc_stride),
                             lambda: prepare_qa_data(self.config, self.tokenizer, block_size, doc_stride=self.doc_stride,
                                                     cache_dir=self.cache_dir(), source=self.file))
        rows = qa_rows(data.train) if data.train is not None else QARows([], [])
        if train and not len(rows):
            raise ConfigError(problems=[Problem(self.file, "$.train_languages", "no training rows")])
        return TaskData(train=rows, eval={lang: qa_rows(w, ex, self.s.max_eval_samples) for lang, (w, ex) in data.eval.items()},
                        test={lang: qa_rows(w, ex) for lang, (w, ex) in data.test.items()}, label_names=[])

    def build_model(self, loaded: Any) -> Any:
        from finetune.compute.hf import NanoGPTForQuestionAnswering

        model = NanoGPTForQuestionAnswering.from_nanogpt(self.config["checkpoint"], loaded=loaded,
                                                         dropout=self.s.dropout)
        model.config.pad_token_id = self.pad_id
        model.config.qa = {"top_k": self.top_k, "max_answer_length": self.max_answer_length,
                           "doc_stride": self.doc_stride}
        return model

    def collate_fn(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return partial(collate_qa, pad_id=self.pad_id)

    def forward(self, model: Any, batch: dict[str, Any]) -> Any:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.start_logits, out.end_logits

    def loss(self, output: Any, batch: dict[str, Any]) -> Any:
        import torch.nn.functional as F

        start, end = output
        labels = batch["labels"]
        return (F.cross_entropy(start.float(), labels[:, 0], reduction="sum")
                + F.cross_entropy(end.float(), labels[:, 1], reduction="sum")) / 2

    def predict(self, model: Any, rows: QARows, *, device: Any, autocast: Any, env: Any = None,
                lockstep: bool = False) -> tuple[Any, Any]:
        """(answers per example and the mean window loss, gold answers per example), on every rank.

        Sharded like classification (:func:`~finetune.compute.training.task.predict_batches`): the
        ranks gather each window's start/end logits over its own tokens and each batch's loss; the
        n-best search and the loss sum (in batch order) then run alike everywhere, so the answers
        and metrics are exactly one process's."""
        from finetune.compute.qa import best_answer
        from finetune.compute.training.task import predict_batches

        def post(output: Any, batch: dict[str, Any]) -> tuple[float, list[tuple[Any, Any]]]:
            start, end = (x.float().cpu().numpy() for x in output)
            n = batch["attention_mask"].sum(dim=1).tolist()  # trimmed to the window: less to gather
            return float(self.loss(output, batch)), [(start[j, :k], end[j, :k]) for j, k in enumerate(n)]

        per_example: dict[int, list[Any]] = {}
        loss_sum = 0.0
        for idx, (loss, logits) in predict_batches(rows, self.s.eval_batch_size, self.collate_fn(),
                                                   partial(self.forward, model), post, device=device,
                                                   autocast=autocast, env=env, lockstep=lockstep):
            loss_sum += loss
            for i, (start, end) in zip(idx, logits, strict=True):
                per_example.setdefault(rows.rows[i], []).append((i, start, end, rows.context_start[i], rows.offsets[i]))
        examples = rows.examples
        answers = []
        for e, context in enumerate(examples.contexts):
            windows = [w[1:] for w in sorted(per_example.get(e, []), key=lambda w: w[0])]  # in context order
            answers.append(best_answer(windows, context, top_k=self.top_k, max_answer_length=self.max_answer_length))
        return {"answers": answers, "loss": loss_sum / max(1, len(rows))}, examples.golds

    def metrics(self, predictions: Any, labels: Any) -> dict[str, float]:
        from finetune.compute.metrics import squad_metrics

        return squad_metrics(predictions["answers"], labels, loss=predictions["loss"])

    def dump(self, folder: Path, trial_id: str, language: str, split: str, predictions: Any, labels: Any) -> None:
        import numpy as np

        from finetune.compute.metrics import exact_match, token_f1

        answers = predictions["answers"]
        em = [max((exact_match(a, g) for g in golds or [""]), default=0.0) for a, golds in zip(answers, labels, strict=True)]
        f1 = [max((token_f1(a, g) for g in golds or [""]), default=0.0) for a, golds in zip(answers, labels, strict=True)]
        self.dump_arrays(folder, trial_id, language, split, exact_match=np.array(em), f1=np.array(f1),
                          prediction=np.array(answers, dtype=str))


class CausalLMTask(Task):
    head_modules = ()

    def load_data(self, block_size: int, *, train: bool = True) -> TaskData:
        from datasets import concatenate_datasets

        from finetune.compute import shared
        from finetune.compute.lm_data import prepare_lm_data

        chunks = shared.cached("data", shared.data_key(self.config, block_size, task="lm"),
                               lambda: prepare_lm_data(self.config, self.tokenizer, block_size,
                                                       cache_dir=self.cache_dir(), source=self.file))
        parts = [chunks[lang]["train"] for lang in self.config.get("train_languages", [])
                 if "train" in chunks.get(lang, {})]
        rows = _lm_rows(concatenate_datasets(parts)) if parts else Rows([], [])
        if train and not len(rows):
            raise ConfigError(problems=[Problem(self.file, "$.train_languages",
                                                f"no training text: less than {block_size} tokens")])
        evals = self.config.get("eval_languages", [])
        return TaskData(train=rows,
                        eval={lang: _lm_rows(chunks[lang]["eval"], self.s.max_eval_samples) for lang in evals
                              if "eval" in chunks.get(lang, {})},
                        test={lang: _lm_rows(chunks[lang]["test"]) for lang in evals if "test" in chunks.get(lang, {})},
                        label_names=[])

    def build_model(self, loaded: Any) -> Any:
        from finetune.compute.hf import NanoGPTForCausalLM

        model = NanoGPTForCausalLM.from_nanogpt(self.config["checkpoint"], loaded=loaded, dropout=self.s.dropout)
        model.config.pad_token_id = self.pad_id
        return model

    def token_losses(self, output: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Per row: summed next-token cross-entropy and the number of predicted tokens."""
        import torch.nn.functional as F

        logits = output[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].to(logits.dtype)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        ce = ce.view(targets.shape) * mask
        return ce.sum(dim=1), mask.sum(dim=1)

    def loss(self, output: Any, batch: dict[str, Any]) -> Any:
        """Sum over rows of each row's mean token loss (rows are full blocks but for a tiny corpus)."""
        sums, counts = self.token_losses(output, batch)
        return (sums / counts.clamp(min=1)).sum()

    def predict(self, model: Any, rows: Rows, *, device: Any, autocast: Any, env: Any = None,
                lockstep: bool = False) -> tuple[Any, Any]:
        """(loss sum per chunk, predicted tokens per chunk), float64, in row order, on every rank
        (sharded like classification: each chunk's numbers are exactly one process's)."""
        import numpy as np

        from finetune.compute.training.task import predict_batches

        def post(output: Any, batch: dict[str, Any]) -> Any:
            s, c = self.token_losses(output, batch)
            return np.stack([s.double().cpu().numpy(), c.double().cpu().numpy()], axis=1)

        out = np.zeros((len(rows), 2), dtype=np.float64)
        for idx, values in predict_batches(rows, self.s.eval_batch_size, self.collate_fn(), partial(self.forward, model),
                                           post, device=device, autocast=autocast, env=env, lockstep=lockstep):
            out[idx] = values
        return out[:, 0].copy(), out[:, 1].copy()

    def metrics(self, predictions: Any, labels: Any) -> dict[str, float]:
        from finetune.compute.metrics import causal_lm_metrics

        return causal_lm_metrics(float(predictions.sum()), int(labels.sum()))

    def dump(self, folder: Path, trial_id: str, language: str, split: str, predictions: Any, labels: Any) -> None:
        self.dump_arrays(folder, trial_id, language, split, loss_sum=predictions, tokens=labels)


def _lm_rows(dataset: Any, limit: int | None = None) -> Rows:
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    ids = [list(x) for x in dataset["input_ids"]]
    return Rows(ids, [0] * len(ids))
