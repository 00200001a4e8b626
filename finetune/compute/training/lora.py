"""LoRA adapters through peft: which layers, which settings, what trains, how to merge.

``lora_r`` 0 (the default) is full fine-tuning. Otherwise every linear layer whose name ends in
one of ``lora_targets`` (nanoGPT's ``c_attn``, ``c_proj``, ``c_fc``) gets a rank-``lora_r``
adapter scaled by ``lora_alpha / lora_r``; the base weights are frozen and only the adapters and
the task head (``modules_to_save``: the classifier ``score``, the QA ``qa_outputs``) train. The
causal LM's head is tied to the token embedding and stays frozen. Checkpoints then hold only
the trainable tensors (``CheckpointStore(trainable_only=True)``); the frozen ones are rebuilt
from the pretrained checkpoint, which is what makes resume exact.

``lora_4bit`` (QLoRA): the frozen base is loaded in 4-bit NF4 through transformers'
``BitsAndBytesConfig`` (:func:`load_4bit`, peft's ``prepare_model_for_kbit_training``), heads in
full precision. It needs bitsandbytes (refused by :func:`lora_settings` otherwise) and CUDA
(:func:`check_qlora`; the planner refuses it earlier, without slurm.gpus or a GPU here).

The trial's ``model/`` holds the adapter (peft's ``adapter_model.safetensors``, ``adapter_config.json``),
the base model's config and the tokenizer; ``merge`` folds the adapter into the base weights for
a model directory that loads without peft (``finetune convert --merge-lora``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, Problem

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    four_bit: bool


def lora_settings(config: dict[str, Any], *, file: str) -> LoraSettings | None:
    """The trial's LoRA settings, or None for full fine-tuning; ConfigError for what cannot run here."""
    hp = config.get("hyperparameters") or {}
    r = int(hp.get("lora_r") or 0)
    if r <= 0:
        return None
    settings = LoraSettings(r=r, alpha=float(hp.get("lora_alpha", 16)), dropout=float(hp.get("lora_dropout", 0.0)),
                            targets=tuple(hp.get("lora_targets") or DEFAULT_TARGETS),
                            four_bit=bool(hp.get("lora_4bit", False)))
    problems = []
    try:
        import peft  # noqa: F401
    except ImportError:
        problems.append(Problem(file, "$.hyperparameters.lora_r", "LoRA needs peft (pip install peft, or finetune[train])"))
    if settings.four_bit and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(Problem(file, "$.hyperparameters.lora_4bit", "4-bit QLoRA needs bitsandbytes, which this "
                                "Python lacks (pip install bitsandbytes, or finetune[qlora]); or set lora_4bit to false"))
    if problems:
        raise ConfigError(problems=problems)
    return settings


# Where bitsandbytes' 4-bit kernels are used for training. (bitsandbytes >= 0.50 also runs them on
# CPU, slowly; the tests use that to run this path, training on CPU is refused.)
QLORA_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


def check_qlora(*, device: Any, strategy: str, file: str) -> None:
    """ConfigError (file and JSON path) when a 4-bit QLoRA trial cannot run where it was started."""
    problems = []
    if device.type not in QLORA_DEVICE_TYPES:
        problems.append(Problem(file, "$.hyperparameters.lora_4bit", f"4-bit QLoRA needs CUDA (bitsandbytes' 4-bit "
                                f"kernels) and this trial runs on {device.type}: give it a GPU (slurm.gpus, "
                                "training.device) or set lora_4bit to false"))
    if strategy == "fsdp":
        problems.append(Problem(file, "$.training.strategy", "4-bit QLoRA does not run under fsdp here (its packed "
                                "4-bit weights are not sharded); use ddp or single"))
    if problems:
        raise ConfigError(problems=problems)


# Never quantized: the task heads (trained beside the adapters) and the causal LM's head, which is
# tied to the token embedding.
KEEP_FULL_PRECISION = ("lm_head",)


def quantization_config(*, compute_dtype: Any, skip_modules: tuple[str, ...]) -> Any:
    """QLoRA's recipe (Dettmers et al. 2023): NF4 weights, double quantization of the scales,
    matmuls in ``compute_dtype``; ``skip_modules`` stay in full precision."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=list(dict.fromkeys((*skip_modules, *KEEP_FULL_PRECISION))))


def load_4bit(model: Any, *, device: Any, compute_dtype: Any, skip_modules: tuple[str, ...]) -> Any:
    """``model`` (a built nanoGPT head model, fresh head included) loaded again through transformers'
    bitsandbytes 4-bit path: ``save_pretrained`` to a temporary folder, ``from_pretrained`` of its
    registered class with the quantization config onto ``device``, then peft's
    ``prepare_model_for_kbit_training`` (everything frozen, the non-quantized weights in float32).
    The adapters go on top with :func:`add_adapters`. The quantization of the same weights is
    deterministic, which keeps a resumed run exact (its checkpoints hold only the trainable tensors)."""
    import tempfile

    from peft import prepare_model_for_kbit_training

    config = quantization_config(compute_dtype=compute_dtype, skip_modules=skip_modules)
    with tempfile.TemporaryDirectory(prefix="qlora-") as tmp:
        model.save_pretrained(tmp)
        quantized = type(model).from_pretrained(tmp, quantization_config=config, device_map={"": str(device)})
    return prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)


def add_adapters(model: Any, settings: LoraSettings, head_modules: tuple[str, ...]) -> Any:
    """``model`` with LoRA adapters (a peft ``PeftModel``); only adapters and head train."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in settings.targets if t not in names]
    if missing:
        raise ConfigError(problems=[Problem("trial config", "$.hyperparameters.lora_targets",
                                            f"no layer named {', '.join(missing)} in the model "
                                            f"(linear layers: c_attn, c_proj, c_fc)")])
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets), modules_to_save=list(head_modules) or None,
                        bias="none")
    # the config's architectures name the head class, for the merge
    model.config.architectures = [type(model).__name__]
    return get_peft_model(model, config)


def parameter_counts(model: Any) -> dict[str, int]:
    """Trainable and total parameters (shared tensors counted once; a packed 4-bit weight as the
    weights it holds)."""
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        quant = getattr(p, "quant_state", None)  # bitsandbytes Params4bit: two weights a byte
        seen.setdefault(id(p), (quant.shape.numel() if quant is not None else p.numel(), p.requires_grad))
    return {"trainable": sum(n for n, t in seen.values() if t), "total": sum(n for n, _ in seen.values())}


def is_peft(model: Any) -> bool:
    return type(model).__name__.startswith("Peft")


def save_adapter(model: Any, folder: Path) -> None:
    """The adapter and head (peft), plus the base model's config (head class, labels) for the merge."""
    model.save_pretrained(str(folder))
    inner = model.get_base_model()
    inner.config.architectures = [type(inner).__name__]
    inner.config.save_pretrained(str(folder))


def load_adapter_model(model_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str], *,
                       as_trained: bool = False) -> Any:
    """A trial's saved adapter on its base model (a peft ``PeftModel``, not merged: its outputs are
    exactly the trained model's): the head class, labels and QA settings from the saved config, the
    frozen weights from the pretrained nanoGPT ``checkpoint``, adapters and head from ``model_dir``.
    ``as_trained``: a QLoRA adapter (its saved config has a ``quantization_config``) goes on the
    same 4-bit NF4 base it trained on (on the CPU, float32 matmuls), not the full-precision one."""
    from peft import PeftConfig, PeftModel

    from finetune.compute import hf

    base_config = hf.NanoGPTConfig.from_pretrained(str(model_dir))
    cls = getattr(hf, (base_config.architectures or ["NanoGPTForSequenceClassification"])[0])
    keep = {k: getattr(base_config, k) for k in ("id2label", "label2id", "pad_token_id", "eos_token_id",
                                                  "bos_token_id") if getattr(base_config, k, None) is not None}
    if getattr(base_config, "qa", None):
        keep["qa"] = base_config.qa
    num_labels = base_config.num_labels if cls is hf.NanoGPTForSequenceClassification else None
    base = cls.from_nanogpt(checkpoint, num_labels, **keep)
    if as_trained and getattr(base_config, "quantization_config", None):
        import torch

        heads = tuple(PeftConfig.from_pretrained(str(model_dir)).modules_to_save or ())
        base = load_4bit(base, device="cpu", compute_dtype=torch.float32, skip_modules=heads)
    return PeftModel.from_pretrained(base, str(model_dir))


def merge(trial_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Fold a finished LoRA trial's adapter into its base checkpoint; write a plain HF model dir."""

    from finetune import layout
    from finetune.errors import UsageError
    from finetune.fileio import atomic_directory, read_json

    trial, out = Path(trial_dir), Path(out_dir)
    model_dir = layout.model_dir(trial)
    problems = []
    if not (model_dir / "adapter_config.json").is_file():
        problems.append(Problem("TRIAL_DIR", "", f"{model_dir}: no LoRA adapter here (adapter_config.json); "
                                "is it a finished trial with lora_r > 0?"))
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        problems.append(Problem("OUT_DIR", "", f"{out} exists and is not empty; use --force to replace it"))
    if problems:
        raise UsageError(problems=problems)
    from transformers import AutoTokenizer

    config = read_json(layout.config_file(trial))
    merged = load_adapter_model(model_dir, config["checkpoint"]).merge_and_unload()
    merged.config.architectures = [type(merged).__name__]
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(tmp)
    return out
