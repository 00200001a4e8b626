"""``pipeline("question-answering")`` for a saved ``NanoGPTForQuestionAnswering``.

transformers 5 removed its question-answering pipeline; this one does what the trainer's
evaluation does (``finetune.compute.qa``): windows over the context, the n-best search bounded
by ``top_k`` and ``max_answer_length``, answers mapped back through the token offsets::

    qa = pipeline("question-answering", model=DIR, trust_remote_code=True)
    qa(question="Where is the Louvre?", context="The Louvre is in Paris.")
    # {"answer": "Paris", "score": ..., "start": 17, "end": 22}

``top_k`` > 1 returns a list of that many answers, best first. ``max_answer_length``,
``doc_stride`` and ``top_k`` default to the values the model was fine-tuned with, when its
config records them (``config.qa``), else to 30, a quarter window and 1.
"""

from __future__ import annotations

from typing import Any

from transformers import Pipeline


class NanoGPTQuestionAnsweringPipeline(Pipeline):
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs: Any = None, *args: Any, question: str | None = None, context: str | None = None,
                 **kwargs: Any) -> Any:
        if inputs is None:
            inputs = {"question": question, "context": context}
        return super().__call__(inputs, *args, **kwargs)

    def _sanitize_parameters(self, top_k: int | None = None, max_answer_length: int | None = None,
                             doc_stride: int | None = None, **kwargs: Any):
        saved = getattr(self.model.config, "qa", None) or {}
        pre = {"doc_stride": doc_stride if doc_stride is not None else saved.get("doc_stride")}
        post = {"top_k": top_k if top_k is not None else 1,
                "n_best": max(top_k or 1, int(saved.get("top_k") or 20)),
                "max_answer_length": max_answer_length or int(saved.get("max_answer_length") or 30)}
        return pre, {}, post

    def preprocess(self, inputs: dict[str, str], doc_stride: int | None = None) -> dict[str, Any]:
        import torch

        from finetune.compute.qa import make_windows

        if not isinstance(inputs, dict) or not inputs.get("question") or inputs.get("context") is None:
            raise ValueError("give question= and context= (or a dict with both)")
        tok = self.tokenizer
        question_ids = tok(inputs["question"], add_special_tokens=False)["input_ids"]
        enc = tok(inputs["context"], add_special_tokens=False, return_offsets_mapping=True)
        windows = make_windows(question_ids, enc["input_ids"], enc["offset_mapping"],
                               block_size=int(self.model.config.block_size), sep_id=int(tok.eos_token_id),
                               doc_stride=doc_stride)
        width = max(len(w.input_ids) for w in windows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.full((len(windows), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(windows), width), dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, :len(w.input_ids)] = torch.tensor(w.input_ids)
            mask[i, :len(w.input_ids)] = 1
        return {"input_ids": ids, "attention_mask": mask, "windows": windows, "context": inputs["context"]}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        out = self.model(input_ids=model_inputs["input_ids"], attention_mask=model_inputs["attention_mask"])
        return {"start_logits": out.start_logits, "end_logits": out.end_logits,
                "windows": model_inputs["windows"], "context": model_inputs["context"]}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int = 1, n_best: int = 20,
                    max_answer_length: int = 30) -> Any:
        import numpy as np

        from finetune.compute.qa import best_spans

        starts = model_outputs["start_logits"].float().cpu().numpy()
        ends = model_outputs["end_logits"].float().cpu().numpy()
        per_window = [(starts[i], ends[i], w.context_start, w.offsets) for i, w in enumerate(model_outputs["windows"])]
        spans = best_spans(per_window, model_outputs["context"], top_k=n_best, max_answer_length=max_answer_length)
        if spans:  # a probability over the n-best list, as transformers' old pipeline reported
            scores = np.array([s.score for s in spans])
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
        answers = [{"answer": s.text, "score": float(p), "start": s.start, "end": s.end}
                   for s, p in zip(spans, probs if spans else [], strict=True)][:top_k]
        if top_k == 1:
            return answers[0] if answers else {"answer": "", "score": 0.0, "start": 0, "end": 0}
        return answers
