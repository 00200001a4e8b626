"""`finetune convert`: nanoGPT ckpt.pt -> HF directory; bad input exits 2 and writes nothing."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
from nanogpt_fixtures import tiny_pretrained, write_nanogpt_checkpoint  # noqa: F401

from finetune.cli import main
from finetune.compute.model import load_gpt, transformer_hidden

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_causal_lm_directory_reproduces_the_checkpoint(tiny_pretrained, tmp_path, capsys):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import finetune.compute.hf  # noqa: F401  (registers the Auto classes)

    ckpt, prefix = tiny_pretrained
    out = tmp_path / "lm"
    assert main(["convert", str(ckpt), str(out), "--task", "causal-lm"]) == 0
    assert f"tokenizer from {prefix}" in capsys.readouterr().out  # found beside the ckpt dir
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    lm = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.model_max_length == 64
    assert lm.config.pad_token_id == tok.pad_token_id
    gpt = load_gpt(ckpt)
    x = tok(["Москва — столица России."], return_tensors="pt")["input_ids"]
    assert torch.equal(lm(x).logits, gpt.lm_head(transformer_hidden(gpt.transformer, x)))


def test_classification_with_label_names(tiny_pretrained, tmp_path):  # noqa: F811
    ckpt, prefix = tiny_pretrained
    out = tmp_path / "clf"
    rc = main(["convert", str(ckpt), str(out), "--task", "classification", "--labels", "sports", "travel",
               "--tokenizer", str(prefix)])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["NanoGPTForSequenceClassification"]
    assert config["id2label"] == {"0": "sports", "1": "travel"} and config["model_type"] == "nanogpt"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_existing_output_is_kept_unless_forced(tiny_pretrained, tmp_path, capsys):  # noqa: F811
    ckpt, _ = tiny_pretrained
    out = tmp_path / "clf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", str(ckpt), str(out), "--task", "classification", "--num-labels", "3"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert main(["convert", str(ckpt), str(out), "--task", "classification", "--num-labels", "3", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def _bad_shapes(tmp_path):
    path = tmp_path / "bad" / "ckpt.pt"
    saved = write_nanogpt_checkpoint(path, n_embd=32)
    saved["model"]["transformer.ln_f.weight"] = torch.ones(31)
    del saved["model"]["transformer.h.0.mlp.c_fc.weight"]
    torch.save(saved, path)
    return path, ["$.model.transformer.ln_f.weight", "$.model.transformer.h.0.mlp.c_fc.weight"]


def _needs_unpickling(tmp_path):
    from argparse import Namespace

    path = tmp_path / "pickled" / "ckpt.pt"
    saved = write_nanogpt_checkpoint(path)
    saved["config"] = Namespace(lr=1.0)  # what old training scripts saved: not plain data
    buf = io.BytesIO()
    torch.save(saved, buf)
    path.write_bytes(buf.getvalue())
    return path, ["refused", "arbitrary unpickling"]


def _missing(tmp_path):
    return tmp_path / "absent" / "ckpt.pt", ["checkpoint file not found"]


def _text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello world\nthis is not a checkpoint\n")
    return path, ["not a checkpoint", "neither torch.save's zip format nor a pickle"]


def _empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    return path, ["not a checkpoint: the file is empty"]


def _corrupt_pickle(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x80\x02garbage")
    return path, ["not a readable torch checkpoint", "corrupt"]


@pytest.mark.parametrize("make", [_bad_shapes, _needs_unpickling, _missing, _text_file, _empty_file, _corrupt_pickle],
                         ids=["shapes", "unpickling", "missing", "text", "empty", "corrupt"])
def test_bad_checkpoints_exit_2_with_the_reason_and_write_nothing(tmp_path, capsys, make):
    ckpt, expected = make(tmp_path)
    out = tmp_path / "out"
    assert main(["convert", str(ckpt), str(out), "--task", "classification", "--num-labels", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and str(ckpt) in err
    assert all(e in err for e in expected), err
    if make in (_text_file, _empty_file, _corrupt_pickle):  # called what it is, not an unsafe checkpoint
        assert "unpickling" not in err and "refused" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--task", "classification"], "--num-labels: required"),
        (["--task", "classification", "--num-labels", "0"], "--num-labels: must be at least 1"),
        (["--task", "classification", "--num-labels", "3", "--labels", "a", "b"], "--labels: 2 labels but --num-labels 3"),
        (["--task", "causal-lm", "--num-labels", "3"], "only meaningful with --task classification"),
        (["--task", "causal-lm", "--tokenizer", "/nonexistent/tok"], "/nonexistent/tok-vocab.json: tokenizer file not found"),
    ],
)
def test_flag_errors_exit_2_before_reading_the_checkpoint(tmp_path, capsys, flags, expected):
    ckpt = tmp_path / "m" / "ckpt.pt"
    write_nanogpt_checkpoint(ckpt)
    assert main(["convert", str(ckpt), str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tiny_pretrained, tmp_path, capsys):  # noqa: F811
    ckpt = tmp_path / "small" / "ckpt.pt"
    write_nanogpt_checkpoint(ckpt, vocab_size=100)
    rc = main(["convert", str(ckpt), str(tmp_path / "out"), "--task", "causal-lm", "--tokenizer", str(tiny_pretrained[1])])
    assert rc == 2 and "512 tokens but the checkpoint's vocab_size is 100" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_cli_module_and_convert_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, finetune.cli.model, finetune.compute.convert, finetune.compute.tokenizer, finetune.compute.pretrain\n"
            "heavy = [m for m in ('torch', 'transformers', 'tokenizers', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_a_checkpoint_directory_stands_for_its_ckpt_pt(tiny_pretrained, tmp_path):  # noqa: F811
    ckpt, _ = tiny_pretrained
    out = tmp_path / "lm"
    assert main(["convert", str(ckpt.parent), str(out), "--task", "causal-lm"]) == 0
    assert (out / "tokenizer.json").is_file()
