"""Tiny nanoGPT checkpoints and tokenizers for tests, made by the real ``finetune.compute.pretrain``.

Other test modules may use these::

    from nanogpt_fixtures import make_tiny_pretrained, tiny_pretrained  # noqa: F401

    def test_something(tiny_pretrained):           # session-cached: (ckpt_path, tokenizer_prefix)
        ckpt, prefix = tiny_pretrained

``make_tiny_pretrained(tmp_path)`` trains one in a couple of seconds (2 layers, 32 dims, block 64,
vocab <= 512, 20 steps) on SIB-200 Russian and Polish training sentences, or on ``texts``.
``write_nanogpt_checkpoint`` writes a random-weight ckpt.pt in nanoGPT's format (optionally with
torch.compile's ``_orig_mod.`` keys or old ``attn.bias`` mask buffers) without training.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = dict(vocab_size=512, n_layer=2, n_head=2, n_embd=32, block_size=64, steps=20, batch_size=8, learning_rate=1e-2)


def sib200_texts(languages: tuple[str, ...] = ("rus_Cyrl", "pol_Latn"), per_language: int = 150) -> list[str]:
    """The first ``per_language`` SIB-200 training sentences of each language (real data)."""
    root = REPO / "data" / "sib200"
    texts: list[str] = []
    for lang in languages:
        with open(root / lang / "train.tsv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        texts += [r["text"] for r in rows[:per_language]]
    return texts


def make_tiny_pretrained(tmp_path: Path, texts: list[str] | None = None, name: str = "tiny", **overrides):
    """Pretrain a tiny model + tokenizer under ``tmp_path``: returns (ckpt_path, tokenizer_prefix)."""
    from finetune.compute.pretrain import pretrain

    result = pretrain(texts if texts is not None else sib200_texts(), tmp_path, name, **{**TINY, **overrides})
    return result.ckpt_path, result.tokenizer_prefix


_SESSION: dict[str, tuple[Path, Path]] = {}


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny pretrained (ckpt.pt, tokenizer prefix) per test session; do not modify the files.

    pytest makes one session fixture per module that imports it, so the files are also cached
    here, per process: every module of the session gets the same model.
    """
    key = str(tmp_path_factory.getbasetemp())
    cached = _SESSION.get(key)
    if cached is None or not cached[0].is_file():
        cached = _SESSION[key] = make_tiny_pretrained(tmp_path_factory.mktemp("nanogpt"))
    return cached


def write_nanogpt_checkpoint(
    path: Path,
    *,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 32,
    block_size: int = 32,
    vocab_size: int = 100,
    bias: bool = True,
    dropout: float = 0.0,
    compiled: bool = False,
    mask_buffers: bool = False,
    seed: int = 0,
    extra: dict | None = None,
) -> dict:
    """Write a random-weight nanoGPT-format ckpt.pt; returns the saved dict (its ``model`` as saved)."""
    import torch

    from finetune.compute.model import GPT, GPTConfig

    torch.manual_seed(seed)
    args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                vocab_size=vocab_size, dropout=dropout)
    model = GPT(GPTConfig(**args))
    state = dict(model.state_dict())
    if mask_buffers:  # nanoGPT before flash attention registered a tril buffer as attn.bias
        tril = torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)
        for i in range(n_layer):
            state[f"transformer.h.{i}.attn.bias"] = tril
    if compiled:
        state = {"_orig_mod." + k: v for k, v in state.items()}
    ckpt = {"model": state, "model_args": args, "iter_num": 100, "best_val_loss": 3.5,
            "config": {"dataset": "test", "n_layer": n_layer}, **(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    path.write_bytes(buf.getvalue())
    return ckpt
