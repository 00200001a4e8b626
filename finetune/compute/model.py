"""A plain nanoGPT GPT and safe loading of nanoGPT checkpoints.

Parameter names and shapes are nanoGPT's (``transformer.wte``, ``transformer.h.N.attn.c_attn``,
..., ``lm_head`` tied to ``wte``), so a nanoGPT state dict loads directly, and so are the
numerics: pre-LayerNorm blocks, exact GELU, tied embeddings. Attention is torch's fused
``scaled_dot_product_attention``; an optional ``attention_mask`` (1 = token, 0 = padding) keeps
queries from attending to padding.

Checkpoints are read with ``torch.load(weights_only=True)`` only: a file that needs arbitrary
unpickling is refused, never unpickled. Every missing, unexpected or mis-shaped key is reported
at once in a ``CheckpointError``.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from finetune.errors import FinetuneError, Problem

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
_COMPILE_PREFIX = "_orig_mod."


class CheckpointError(FinetuneError):
    """A checkpoint that cannot be read safely or does not match its own ``model_args``."""


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2; False: a bit better and faster


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's ``nn.LayerNorm`` had no ``bias=False`` for long)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:  # the mask already holds causality (is_causal and attn_mask are exclusive in sdpa)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact erf GELU, as nanoGPT (not GPT-2's tanh approximation)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


def build_transformer(config: GPTConfig) -> dict[str, nn.Module]:
    """The trunk's modules under nanoGPT's names; GPT and the HF adapter both hold exactly these."""
    return {
        "wte": nn.Embedding(config.vocab_size, config.n_embd),
        "wpe": nn.Embedding(config.block_size, config.n_embd),
        "drop": nn.Dropout(config.dropout),
        "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        "ln_f": LayerNorm(config.n_embd, bias=config.bias),
    }


def padding_attn_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> (B, 1, T, T) boolean sdpa mask: causal, no attending to padding.

    Each position may always attend to itself, so a padding query never has an empty row (which
    would give NaN); with right padding this changes nothing for real tokens.
    """
    T = attention_mask.size(-1)
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    keys = attention_mask.bool()[:, None, None, :]
    eye = torch.eye(T, dtype=torch.bool, device=attention_mask.device)
    return causal & (keys | eye)


def transformer_hidden(
    trunk: nn.Module, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Final hidden states (after ``ln_f``) of a module holding ``build_transformer``'s parts."""
    t = idx.size(1)
    block_size = trunk.wpe.num_embeddings
    if t > block_size:
        raise ValueError(f"cannot forward a sequence of length {t}, block size is only {block_size}")
    pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
    x = trunk.drop(trunk.wte(idx) + trunk.wpe(pos))
    mask = None
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        mask = padding_attn_mask(attention_mask.to(idx.device))
    for block in trunk.h:
        x = block(x, mask)
    return trunk.ln_f(x)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(build_transformer(config))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output projection is the input embedding
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # scaled init of the residual projections, per the GPT-2 paper
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = transformer_hidden(self.transformer, idx, attention_mask)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            return logits, loss
        # inference: only the last position is needed (nanoGPT's behaviour)
        return self.lm_head(x[:, [-1], :]), None

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float] = (0.9, 0.95)
    ) -> torch.optim.AdamW:
        """nanoGPT's AdamW: weight decay on 2-D tensors (matrices, embeddings), none on biases and gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


# --- checkpoints -------------------------------------------------------------------------------


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy format: pickles (protocol 2 or later) from the first byte


def _format_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint at all (empty, text, ...); None when it might be.

    Looked at before unpickling, so that a text file is called what it is rather than a
    checkpoint that needs arbitrary unpickling."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        return f"cannot read the checkpoint: {e.strerror or e}"
    if not head:
        return "not a checkpoint: the file is empty"
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC):
        return None
    return "not a checkpoint: neither torch.save's zip format nor a pickle (a text file?)"


def _unpickler_detail(error: Exception) -> str:
    """The one informative line of torch's weights-only refusal (its message is mostly advice)."""
    text = str(error).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip()
        return rest.splitlines()[0].split(". Please")[0].strip() if rest else type(error).__name__
    return text.splitlines()[-1] if text else type(error).__name__


def _torch_load(path: Path) -> Any:
    problem = _format_problem(path)
    if problem:
        raise CheckpointError(problems=[Problem(str(path), "", problem)])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but tensors and plain containers; we never retry unsafely
        first = _unpickler_detail(e)
        if first.startswith("Unsupported operand"):  # not an object it refused: bytes it cannot parse
            raise CheckpointError(problems=[Problem(
                str(path), "", f"not a readable torch checkpoint ({first}): a corrupt file, or a pickle"
                " that torch.save did not write")]) from None
        raise CheckpointError(
            problems=[
                Problem(
                    str(path),
                    "",
                    "refused: the checkpoint needs arbitrary unpickling, which could run code "
                    f"(torch.load weights_only=True failed: {first}). Re-save it with plain types "
                    "(tensors, dicts, lists, numbers, strings).",
                )
            ]
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError) as e:
        # a truncated or corrupt file (the weights-only unpickler fails in many ways on garbage)
        reason = str(e).strip() or f"{type(e).__name__}, the file is truncated or corrupt"
        raise CheckpointError(
            problems=[Problem(str(path), "", f"not a readable torch checkpoint: {reason}")]
        ) from None


def _model_args(path: Path, ckpt: dict) -> GPTConfig:
    args = ckpt.get("model_args")
    if not isinstance(args, dict):
        raise CheckpointError(problems=[Problem(str(path), "$.model_args", "missing or not a dict")])
    problems = [Problem(str(path), f"$.model_args.{k}", "missing") for k in MODEL_ARGS if k not in args]
    types = {f.name: f.type for f in fields(GPTConfig)}
    for k in MODEL_ARGS:
        if k not in args:
            continue
        v = args[k]
        want = {"int": int, "float": (int, float), "bool": bool}[str(types[k])]
        if isinstance(v, bool) and want is not bool or not isinstance(v, want):
            problems.append(Problem(str(path), f"$.model_args.{k}", f"expected {types[k]}, got {v!r}"))
        elif k != "bias" and k != "dropout" and v <= 0:
            problems.append(Problem(str(path), f"$.model_args.{k}", f"must be positive, got {v!r}"))
    if not problems and args["n_embd"] % args["n_head"]:
        problems.append(
            Problem(str(path), "$.model_args.n_embd", f"{args['n_embd']} is not divisible by n_head={args['n_head']}")
        )
    if problems:
        raise CheckpointError(problems=problems)
    return GPTConfig(**{k: args[k] for k in MODEL_ARGS})


def clean_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Strip torch.compile's ``_orig_mod.`` prefix; drop the causal-mask buffers of old nanoGPT."""
    out = {}
    for k, v in state.items():
        while k.startswith(_COMPILE_PREFIX):
            k = k[len(_COMPILE_PREFIX) :]
        k = k.replace("." + _COMPILE_PREFIX, ".")
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue  # tril buffers from before flash attention; not parameters
        out[k] = v
    return out


def check_state_dict(
    state: dict[str, Any], expected: dict[str, torch.Tensor], *, file: str, json_path: str = "$.model"
) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped key."""
    problems = []
    for k, ref in expected.items():
        if k not in state:
            problems.append(Problem(file, f"{json_path}.{k}", f"missing (expected shape {tuple(ref.shape)})"))
    for k, v in state.items():
        if k not in expected:
            problems.append(Problem(file, f"{json_path}.{k}", "unexpected key"))
        elif not isinstance(v, torch.Tensor):
            problems.append(Problem(file, f"{json_path}.{k}", f"not a tensor ({type(v).__name__})"))
        elif tuple(v.shape) != tuple(expected[k].shape):
            problems.append(
                Problem(
                    file,
                    f"{json_path}.{k}",
                    f"shape {tuple(v.shape)} does not match model_args (expected {tuple(expected[k].shape)})",
                )
            )
    if problems:
        raise CheckpointError(f"{file}: checkpoint does not match its model_args", problems=problems)


def expected_shapes(config: GPTConfig) -> dict[str, torch.Tensor]:
    """The state dict a nanoGPT GPT of ``config`` has, on the meta device (no memory)."""
    with torch.device("meta"):
        model = GPT(config)
    return dict(model.state_dict())


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[GPTConfig, dict[str, torch.Tensor], dict]:
    """Read a nanoGPT ckpt.pt safely: (GPTConfig from model_args, cleaned state dict, the rest).

    The rest is the checkpoint minus ``model`` (model_args, iter_num, best_val_loss, config, ...).
    A directory stands for its ``ckpt.pt`` (nanoGPT's ``out_dir``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise CheckpointError(problems=[Problem(str(path), "", "checkpoint file not found")])
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            problems=[Problem(str(path), "$", f"expected a dict with 'model' and 'model_args', got {type(ckpt).__name__}")]
        )
    config = _model_args(path, ckpt)
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(problems=[Problem(str(path), "$.model", "missing or not a state dict")])
    state = clean_state_dict(state)
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied; some exporters keep one copy
    check_state_dict(state, expected_shapes(config), file=str(path))
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    return config, state, meta


def load_gpt(path: str | os.PathLike[str]) -> GPT:
    """A GPT with the checkpoint's weights (eval mode)."""
    config, state, _ = load_checkpoint(path)
    model = GPT(config)
    model.load_state_dict(state, strict=True)
    return model.eval()
