"""Hugging Face adapter for the nanoGPT GPT of ``finetune.compute.model``: a thin layer, no new numerics.

``NanoGPTModel`` holds exactly nanoGPT's trunk modules (``wte``, ``wpe``, ``drop``, ``h``,
``ln_f``, built by ``finetune.compute.model.build_transformer``) and runs them with the same function as
``GPT``; the heads keep it under ``transformer``, so their state-dict keys are nanoGPT's
(``transformer.h.0.attn.c_attn.weight``, ...) and ``NanoGPTForCausalLM``'s ``lm_head`` is tied to
``transformer.wte`` as in nanoGPT.

Importing this module registers the classes with AutoConfig, AutoModel,
AutoModelForSequenceClassification, AutoModelForQuestionAnswering and AutoModelForCausalLM
(model_type ``nanogpt``), so
``AutoModelForSequenceClassification.from_pretrained(DIR)`` and
``transformers.pipeline("text-classification", model=DIR)`` work after ``import finetune.compute.hf``.
Model directories written by ``save_pretrained`` also carry an ``auto_map`` and a two-line
``nanogpt_hf.py`` shim, so ``from_pretrained(DIR, trust_remote_code=True)`` works in any Python
where ``finetune`` is installed, without importing it first.

Question answering: transformers 5 dropped its ``question-answering`` pipeline, so a saved
``NanoGPTForQuestionAnswering`` declares ours (``finetune.compute.qa_pipeline``) in its config's
``custom_pipelines``: ``pipeline("question-answering", model=DIR, trust_remote_code=True)`` finds it
through the shim, and ``pipeline(..., pipeline_class=NanoGPTQuestionAnsweringPipeline)`` without it.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutput,
    CausalLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
)

from finetune.compute.model import GPTConfig, build_transformer, load_checkpoint, transformer_hidden
from finetune.errors import Problem

MODEL_TYPE = "nanogpt"
SHIM_FILE = "nanogpt_hf.py"
_SHIM = '''"""Loads finetune's nanoGPT classes (pip install finetune); written by finetune.compute.hf."""
from finetune.compute.hf import (  # noqa: F401
    NanoGPTConfig, NanoGPTForCausalLM, NanoGPTForQuestionAnswering, NanoGPTForSequenceClassification, NanoGPTModel,
)
from finetune.compute.qa_pipeline import NanoGPTQuestionAnsweringPipeline  # noqa: F401
'''
_AUTO_MAP = {
    "AutoConfig": "nanogpt_hf.NanoGPTConfig",
    "AutoModel": "nanogpt_hf.NanoGPTModel",
    "AutoModelForSequenceClassification": "nanogpt_hf.NanoGPTForSequenceClassification",
    "AutoModelForQuestionAnswering": "nanogpt_hf.NanoGPTForQuestionAnswering",
    "AutoModelForCausalLM": "nanogpt_hf.NanoGPTForCausalLM",
}
QA_PIPELINE = {
    "question-answering": {"impl": "nanogpt_hf.NanoGPTQuestionAnsweringPipeline",
                           "pt": ["AutoModelForQuestionAnswering"], "type": "text"},
}


class NanoGPTConfig(PreTrainedConfig):
    """nanoGPT's ``model_args`` plus the usual Hugging Face fields (num_labels, pad_token_id, ...)."""

    model_type = MODEL_TYPE
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "block_size",
    }

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    bias: bool = True
    vocab_size: int = 50304
    dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    use_cache: bool = False  # no KV cache: generation recomputes the prefix
    tie_word_embeddings: bool = True

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(
            block_size=self.block_size, vocab_size=self.vocab_size, n_layer=self.n_layer,
            n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
        )


class NanoGPTPreTrainedModel(PreTrainedModel):
    config_class = NanoGPTConfig
    config: NanoGPTConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    # old nanoGPT checkpoints carry causal-mask buffers named like parameters
    _keys_to_ignore_on_load_unexpected = [r"\.attn\.bias$", r"\.attn\.masked_bias$"]
    # losses are means over the batch; the Trainer must not pass num_items_in_batch
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear/Embedding N(0, 0.02), LayerNorm ones/zeros
        if isinstance(module, nn.Linear) and getattr(module, "_nanogpt_residual", False):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range / (2 * self.config.n_layer) ** 0.5)

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args, **kwargs) -> None:
        """As transformers', plus the ``auto_map`` shim that makes the directory self-describing."""
        self.config.auto_map = dict(_AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        shim = Path(save_directory) / SHIM_FILE
        if kwargs.get("is_main_process", True) and (not shim.exists() or shim.read_text() != _SHIM):
            from finetune.fileio import atomic_write_text

            atomic_write_text(shim, _SHIM)

    @classmethod
    def from_nanogpt(
        cls, ckpt_path: str | os.PathLike[str], num_labels: int | None = None, *,
        loaded: tuple[Any, dict[str, Any], dict] | None = None, **config_overrides
    ) -> NanoGPTPreTrainedModel:
        """This class with a nanoGPT ckpt.pt's weights (safely loaded, every key checked).

        Sizes come from the checkpoint's ``model_args``; ``config_overrides`` may set the other
        config fields (``dropout``, ``pad_token_id``, ``id2label``, ``problem_type``, ...). New
        heads (the classifier) are freshly initialised. ``loaded`` is what
        ``model.load_checkpoint(ckpt_path)`` returned, when the caller already read the file.
        """
        gpt_cfg, state, _ = loaded if loaded is not None else load_checkpoint(ckpt_path)
        sizes = asdict(gpt_cfg)
        clash = sorted(k for k in config_overrides if k in sizes and k != "dropout")
        if clash:
            from finetune.compute.model import CheckpointError

            raise CheckpointError(
                problems=[Problem(str(ckpt_path), f"$.model_args.{k}", "fixed by the checkpoint; cannot override") for k in clash]
            )
        kwargs = {**sizes, **config_overrides}
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        model = cls(NanoGPTConfig(**kwargs))
        own = model.state_dict()
        trunk = "transformer." if cls is not NanoGPTModel else ""
        weights = {}
        for k, v in state.items():
            if k.startswith("transformer."):
                weights[trunk + k.removeprefix("transformer.")] = v
            elif k in own:  # lm_head (tied to wte) of the causal LM; other heads have none
                weights[k] = v
        missing, unexpected = model.load_state_dict(weights, strict=False)
        # load_checkpoint checked every key against model_args, so only new heads may be missing
        trunk_missing = [k for k in missing if k.startswith(trunk)] if trunk else missing
        if unexpected or trunk_missing:
            raise AssertionError(f"adapter does not match model.py: missing {missing}, unexpected {unexpected}")
        if "lm_head.weight" in own:
            model.tie_weights()
        return model


class NanoGPTModel(NanoGPTPreTrainedModel):
    """The trunk: token + position embeddings, blocks, final LayerNorm -> last hidden states."""

    def __init__(self, config: NanoGPTConfig):
        super().__init__(config)
        for name, module in build_transformer(config.gpt_config()).items():
            self.add_module(name, module)
        for block in self.h:
            block.attn.c_proj._nanogpt_residual = True
            block.mlp.c_proj._nanogpt_residual = True
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.wte

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.wte = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,  # tokenizers may send them; GPTs have none
        return_dict: bool | None = None,
    ) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=transformer_hidden(self, input_ids, attention_mask))


def last_token_index(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Index of the last real token in each row (right padding; also correct for left padding)."""
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)
    positions = torch.arange(length, device=device)
    return (positions * attention_mask.to(device).long()).argmax(-1)


class NanoGPTForSequenceClassification(NanoGPTPreTrainedModel):
    """Classifies a sequence from the hidden state of its last non-padding token."""

    def __init__(self, config: NanoGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = NanoGPTModel(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.wte

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput:
        hidden = self.transformer(input_ids, attention_mask=attention_mask).last_hidden_state
        b, t = input_ids.shape[:2]
        last = last_token_index(attention_mask, b, t, hidden.device)
        logits = self.score(hidden[torch.arange(b, device=hidden.device), last])
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return MSELoss()(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))


class NanoGPTForQuestionAnswering(NanoGPTPreTrainedModel):
    """Extractive QA: a start and an end logit for every token (``qa_outputs``, as BERT's).

    Inputs are ``question + eos + context`` (``finetune.compute.qa``); the loss is the mean of
    the start and end cross-entropies, as in transformers' QA heads. Padding positions get
    ``-inf`` logits so they are never chosen.
    """

    def __init__(self, config: NanoGPTConfig):
        super().__init__(config)
        self.num_labels = 2
        self.transformer = NanoGPTModel(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.wte

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args, **kwargs) -> None:
        self.config.custom_pipelines = dict(QA_PIPELINE)
        super().save_pretrained(save_directory, *args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        hidden = self.transformer(input_ids, attention_mask=attention_mask).last_hidden_state
        start_logits, end_logits = self.qa_outputs(hidden).float().unbind(-1)
        if attention_mask is not None:
            pad = attention_mask.to(start_logits.device) == 0
            start_logits = start_logits.masked_fill(pad, float("-inf"))
            end_logits = end_logits.masked_fill(pad, float("-inf"))
        loss = None
        if start_positions is not None and end_positions is not None:
            n = start_logits.size(1)
            start = start_positions.to(start_logits.device).clamp(0, n - 1)
            end = end_positions.to(end_logits.device).clamp(0, n - 1)
            loss = (F.cross_entropy(start_logits, start) + F.cross_entropy(end_logits, end)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)


class NanoGPTForCausalLM(NanoGPTPreTrainedModel, GenerationMixin):
    """Language model head tied to the token embedding (nanoGPT's ``lm_head``)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: NanoGPTConfig):
        super().__init__(config)
        self.transformer = NanoGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # no KV cache: feed the whole (cropped) sequence every step, as nanoGPT's generate does
        block = self.config.block_size
        mask = attention_mask[:, -block:] if attention_mask is not None else None
        return {"input_ids": input_ids[:, -block:], "attention_mask": mask}

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        hidden = self.transformer(input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:  # labels are the inputs; shifted here, as in transformers
            labels = labels.to(logits.device)
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)


def register() -> None:
    """Register the classes with transformers' Auto* factories (idempotent)."""
    AutoConfig.register(MODEL_TYPE, NanoGPTConfig, exist_ok=True)
    AutoModel.register(NanoGPTConfig, NanoGPTModel, exist_ok=True)
    AutoModelForSequenceClassification.register(NanoGPTConfig, NanoGPTForSequenceClassification, exist_ok=True)
    AutoModelForQuestionAnswering.register(NanoGPTConfig, NanoGPTForQuestionAnswering, exist_ok=True)
    AutoModelForCausalLM.register(NanoGPTConfig, NanoGPTForCausalLM, exist_ok=True)


register()
