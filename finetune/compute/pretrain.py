"""Make a byte-level BPE tokenizer and a small nanoGPT language model from a text corpus.

The outputs are in exactly the layouts a nanoGPT user has, so nothing downstream can tell
them from a real nanoGPT run::

    OUT_DIR/<name>/ckpt.pt          {"model", "optimizer", "model_args", "iter_num",
                                     "best_val_loss", "config"}  (loads with weights_only=True)
    OUT_DIR/<name>-vocab.json       GPT-2 byte-level BPE vocabulary
    OUT_DIR/<name>-merges.txt       GPT-2 merges ("#version: 0.2" header)

Training is nanoGPT's: documents joined with ``<|endoftext|>`` into one token stream, random
``block_size`` windows, AdamW (decay on matrices only), linear warmup then cosine decay to a tenth
of the peak rate, gradient clipping at 1.0. The checkpoint is written last and atomically, so its
presence means the run finished.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from finetune.errors import Problem, UsageError
from finetune.fileio import atomic_write_bytes

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class PretrainResult:
    ckpt_path: Path
    tokenizer_prefix: Path  # <out_dir>/<name>: -vocab.json and -merges.txt beside it
    vocab_size: int  # the trained vocabulary (may be below the requested size on a small corpus)
    tokens: int  # tokens in the corpus stream
    steps: int
    train_loss: float  # mean loss of the last few steps
    val_loss: float  # loss on the held-out tenth of the stream (also best_val_loss)
    wall_s: float
    tokens_per_s: float
    skipped: bool = False  # the outputs existed and if_exists="skip"


def output_paths(out_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path, Path]:
    """(ckpt.pt, vocab.json, merges.txt) for ``name`` under ``out_dir``."""
    out = Path(out_dir)
    return out / name / "ckpt.pt", out / f"{name}-vocab.json", out / f"{name}-merges.txt"


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE (``tokenizers``) trained on ``texts``, with ``<|endoftext|>`` as id 0."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=True)
    tok.train_from_iterator(
        list(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False
    )
    return tok


def _write_tokenizer(tok, vocab_path: Path, merges_path: Path) -> None:
    name = vocab_path.name[: -len("-vocab.json")]
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_model(tmp, name)
        atomic_write_bytes(vocab_path, (Path(tmp) / vocab_path.name).read_bytes())
        atomic_write_bytes(merges_path, (Path(tmp) / merges_path.name).read_bytes())


def _validate(texts: Sequence[str], name: str, **sizes: int | float) -> list[str]:
    problems = []
    if not name or "/" in name or name.startswith("."):
        problems.append(Problem("--name", "", f"{name!r} is not a plain file name"))
    for key, value in sizes.items():
        if value <= 0:
            problems.append(Problem(f"--{key.replace('_', '-')}", "", f"must be positive, got {value}"))
    if sizes.get("n_embd", 1) > 0 and sizes.get("n_head", 1) > 0 and sizes["n_embd"] % sizes["n_head"]:
        problems.append(Problem("--n-embd", "", f"{sizes['n_embd']} is not divisible by --n-head {sizes['n_head']}"))
    clean = [t.strip() for t in texts if t and t.strip()]
    if not clean:
        problems.append(Problem("corpus", "", "no non-empty texts to train on"))
    if problems:
        raise UsageError(problems=problems)
    return clean


def learning_rate_at(step: int, peak: float, warmup: int, steps: int) -> float:
    """nanoGPT's schedule: linear warmup to ``peak``, then cosine decay to ``peak / 10``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(1, steps - warmup), 1.0)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pretrain(
    texts: Sequence[str],
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    vocab_size: int = 2000,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    block_size: int = 128,
    steps: int = 50,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
    dropout: float = 0.0,
    bias: bool = False,
    weight_decay: float = 0.1,
    warmup_steps: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    if_exists: Literal["error", "skip", "overwrite"] = "error",
    log=None,
) -> PretrainResult:
    """Train a tokenizer and a GPT on ``texts``; write them under ``out_dir`` (see module doc).

    ``if_exists``: what to do when ``<name>/ckpt.pt`` already exists (a finished run): raise a
    UsageError, return at once (``skipped=True``), or train again and replace it.
    ``log``: optional callable taking one line of progress text. ``threads``: CPU threads for
    torch during this call (default: torch's, one per core); on a machine shared by several
    training processes, 1 avoids oversubscription and is often several times faster.
    """
    ckpt_path, vocab_path, merges_path = output_paths(out_dir, name)
    if ckpt_path.exists() and if_exists != "overwrite":
        if if_exists == "skip" and vocab_path.is_file() and merges_path.is_file():
            return PretrainResult(ckpt_path, Path(out_dir) / name, 0, 0, 0, math.nan, math.nan, 0.0, 0.0, True)
        raise UsageError(
            problems=[Problem("--out-dir", "", f"{ckpt_path} exists (a finished run); use --force to replace it")]
        )
    from finetune.fileio import ensure_directory

    ensure_directory(ckpt_path.parent, "--out-dir")  # before minutes of training, not after
    texts = _validate(
        texts, name, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        block_size=block_size, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
    )

    import torch

    from finetune.compute.model import GPT, GPTConfig

    with _torch_threads(threads):
        started = time.perf_counter()
        say = log or (lambda line: None)
        torch.manual_seed(seed)
        tok = train_tokenizer(texts, vocab_size)
        eot = tok.token_to_id(EOT)
        ids: list[int] = []
        for enc in tok.encode_batch(texts):
            ids.extend(enc.ids)
            ids.append(eot)
        data = torch.tensor(ids, dtype=torch.long)
        n_val = max(len(data) // 10, 2)
        train, val = data[:-n_val], data[-n_val:]
        # a corpus shorter than a block still trains, on shorter windows; the model keeps block_size
        t_train = min(block_size, len(train) - 1)
        t_val = min(block_size, len(val) - 1)
        if t_train < 1:
            raise UsageError(problems=[Problem("corpus", "", f"only {len(data)} tokens: too small to train on")])

        dev = _pick_device(device)
        config = GPTConfig(
            block_size=block_size, vocab_size=tok.get_vocab_size(), n_layer=n_layer, n_head=n_head,
            n_embd=n_embd, dropout=dropout, bias=bias,
        )
        model = GPT(config).to(dev)
        optimizer = model.configure_optimizers(weight_decay, learning_rate)
        warmup = warmup_steps if warmup_steps is not None else max(1, min(100, steps // 10))
        gen = torch.Generator().manual_seed(seed)

        def batch(split: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            ix = torch.randint(len(split) - t, (batch_size,), generator=gen)
            x = torch.stack([split[i : i + t] for i in ix])
            y = torch.stack([split[i + 1 : i + 1 + t] for i in ix])
            return x.to(dev), y.to(dev)

        model.train()
        recent: list[float] = []
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, learning_rate, warmup, steps)
            x, y = batch(train, t_train)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            recent = (recent + [loss.item()])[-10:]
            if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
                say(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f}")

        model.eval()
        with torch.no_grad():
            val_losses = [model(*batch(val, t_val))[1].item() for _ in range(4)] if t_val >= 1 else [math.nan]
        val_loss = float(sum(val_losses) / len(val_losses))
        wall = time.perf_counter() - started

        _write_tokenizer(tok, vocab_path, merges_path)
        ckpt = {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "model_args": {
                "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size,
                "bias": bias, "vocab_size": config.vocab_size, "dropout": dropout,
            },
            "iter_num": steps,
            "best_val_loss": val_loss,
            "config": {
                "out_dir": str(Path(out_dir) / name), "dataset": name, "batch_size": batch_size,
                "block_size": block_size, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
                "dropout": dropout, "bias": bias, "learning_rate": learning_rate, "max_iters": steps,
                "weight_decay": weight_decay, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0,
                "decay_lr": True, "warmup_iters": warmup, "lr_decay_iters": steps,
                "min_lr": learning_rate / 10, "seed": seed, "vocab_size": config.vocab_size,
                "corpus_texts": len(texts), "corpus_tokens": len(data),
            },
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())
        result = PretrainResult(
            ckpt_path=ckpt_path,
            tokenizer_prefix=Path(out_dir) / name,
            vocab_size=config.vocab_size,
            tokens=len(data),
            steps=steps,
            train_loss=float(sum(recent) / len(recent)) if recent else math.nan,
            val_loss=val_loss,
            wall_s=wall,
            tokens_per_s=steps * batch_size * t_train / wall if wall > 0 else 0.0,
        )
        say(f"wrote {ckpt_path} ({result.vocab_size} tokens vocab, val loss {val_loss:.4f}, {wall:.1f}s)")
        return result


def result_dict(result: PretrainResult) -> dict:
    """JSON-friendly form of a PretrainResult."""
    d = asdict(result)
    d["ckpt_path"], d["tokenizer_prefix"] = str(result.ckpt_path), str(result.tokenizer_prefix)
    return d
