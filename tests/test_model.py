"""finetune.compute.model: nanoGPT numerics and safe, key-by-key checkpoint loading."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from nanogpt_fixtures import write_nanogpt_checkpoint
from torch.nn import functional as F

from finetune.compute.model import (
    GPT,
    CheckpointError,
    GPTConfig,
    load_checkpoint,
    load_gpt,
    transformer_hidden,
)
from finetune.errors import FinetuneError


def reference_logits(state: dict, args: dict, idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's forward written out by hand (its slow attention path: explicit tril mask + softmax)."""
    n_head, C = args["n_head"], args["n_embd"]

    def ln(x, prefix):
        return F.layer_norm(x, (C,), state[prefix + ".weight"], state.get(prefix + ".bias"), 1e-5)

    def linear(x, prefix):
        return F.linear(x, state[prefix + ".weight"], state.get(prefix + ".bias"))

    B, T = idx.shape
    x = state["transformer.wte.weight"][idx] + state["transformer.wpe.weight"][:T]
    for i in range(args["n_layer"]):
        p = f"transformer.h.{i}"
        q, k, v = linear(ln(x, p + ".ln_1"), p + ".attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(torch.tril(torch.ones(T, T)).view(1, 1, T, T) == 0, float("-inf"))
        y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + linear(y, p + ".attn.c_proj")
        h = linear(ln(x, p + ".ln_2"), p + ".mlp.c_fc")
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))  # exact GELU
        x = x + linear(h, p + ".mlp.c_proj")
    return ln(x, "transformer.ln_f") @ state["transformer.wte.weight"].T


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"bias": False},
        {"compiled": True},
        {"mask_buffers": True},
        {"compiled": True, "mask_buffers": True, "bias": False},
    ],
    ids=["plain", "no-bias", "compiled-keys", "old-mask-buffers", "all"],
)
def test_loads_nanogpt_checkpoints_with_nanogpt_numerics(tmp_path, variant):
    path = tmp_path / "ckpt.pt"
    saved = write_nanogpt_checkpoint(path, **variant)
    config, state, meta = load_checkpoint(path)
    assert config == GPTConfig(**saved["model_args"])
    assert not any(k.startswith("_orig_mod.") or k.endswith(".attn.bias") for k in state)
    assert meta["iter_num"] == 100 and meta["best_val_loss"] == 3.5 and "model" not in meta

    model = load_gpt(path)
    idx = torch.randint(0, config.vocab_size, (2, 9))
    logits, loss = model(idx, idx)
    plain = {k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()}
    expected = reference_logits(plain, saved["model_args"], idx)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert loss is not None and torch.isfinite(loss)
    # inference returns only the last position, as nanoGPT does
    last, none = model(idx)
    assert none is None and last.shape == (2, 1, config.vocab_size)
    torch.testing.assert_close(last[:, 0], logits[:, -1])


def test_weights_are_tied_and_the_gelu_is_exact():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=11))
    assert model.lm_head.weight is model.transformer.wte.weight
    gelu = model.transformer.h[0].mlp.gelu
    assert gelu.approximate == "none"
    names = {k for k, _ in model.named_parameters()}
    assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.ln_f.bias" in names


def test_right_padding_does_not_change_real_tokens_and_gives_no_nans():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=50)).eval()
    a = torch.randint(0, 50, (1, 5))
    padded = torch.cat([a, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    h_alone = transformer_hidden(model.transformer, a)
    h_padded = transformer_hidden(model.transformer, padded, mask)
    torch.testing.assert_close(h_padded[:, :5], h_alone, rtol=1e-5, atol=1e-6)
    # left padding: the padding rows have no real key but still produce finite numbers
    left = torch.cat([torch.zeros(1, 4, dtype=torch.long), a], dim=1)
    h_left = transformer_hidden(model.transformer, left, mask.flip(1))
    assert torch.isfinite(h_left).all()
    # an all-ones mask is the plain causal path
    torch.testing.assert_close(transformer_hidden(model.transformer, a, torch.ones(1, 5)), h_alone)


def test_missing_lm_head_is_filled_from_the_tied_embedding(tmp_path):
    path = tmp_path / "ckpt.pt"
    saved = write_nanogpt_checkpoint(path)
    del saved["model"]["lm_head.weight"]
    torch.save(saved, path)
    _, state, _ = load_checkpoint(path)
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])


def test_every_mismatched_key_is_listed_in_one_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    saved = write_nanogpt_checkpoint(path, n_layer=2, n_embd=32)
    state = saved["model"]
    del state["transformer.h.1.mlp.c_fc.weight"]
    del state["transformer.ln_f.weight"]
    state["transformer.h.2.attn.c_attn.weight"] = torch.zeros(96, 32)
    state["transformer.wpe.weight"] = torch.zeros(16, 32)  # block_size 32 in model_args
    torch.save(saved, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert isinstance(err.value, FinetuneError) and err.value.exit_code == 2
    paths = {p.path: p.message for p in err.value.problems}
    assert set(paths) == {
        "$.model.transformer.h.1.mlp.c_fc.weight",
        "$.model.transformer.ln_f.weight",
        "$.model.transformer.h.2.attn.c_attn.weight",
        "$.model.transformer.wpe.weight",
    }
    assert paths["$.model.transformer.h.1.mlp.c_fc.weight"] == "missing (expected shape (128, 32))"
    assert paths["$.model.transformer.h.2.attn.c_attn.weight"] == "unexpected key"
    assert "shape (16, 32)" in paths["$.model.transformer.wpe.weight"] and "(32, 32)" in paths["$.model.transformer.wpe.weight"]
    assert all(p.file == str(path) for p in err.value.problems)


def test_bad_model_args_are_listed(tmp_path):
    path = tmp_path / "ckpt.pt"
    saved = write_nanogpt_checkpoint(path)
    saved["model_args"] = {"n_layer": 2, "n_head": 3, "n_embd": 32, "block_size": "32", "bias": True}
    torch.save(saved, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert {(p.path, p.message) for p in err.value.problems} == {
        ("$.model_args.vocab_size", "missing"),
        ("$.model_args.dropout", "missing"),
        ("$.model_args.block_size", "expected int, got '32'"),
    }


class Exploit:
    """Unpickling this would run code (it creates a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_needs_unpickling_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt.pt"
    saved = write_nanogpt_checkpoint(path)
    saved["config"] = Exploit(marker)
    buf = io.BytesIO()
    torch.save(saved, buf)
    path.write_bytes(buf.getvalue())
    assert not marker.exists()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert "refused" in str(err.value) and "arbitrary unpickling" in str(err.value)
    assert err.value.problems[0].file == str(path)


def test_a_plain_pickle_and_garbage_are_clean_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    listy = tmp_path / "list.pt"
    torch.save([1, 2, 3], listy)
    with pytest.raises(CheckpointError, match=r"expected a dict"):
        load_checkpoint(listy)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    old_style = tmp_path / "old.pt"
    old_style.write_bytes(pickle.dumps({"model": {}, "model_args": Exploit(tmp_path / "x")}))
    with pytest.raises(CheckpointError):
        load_checkpoint(old_style)
    assert not (tmp_path / "x").exists()
