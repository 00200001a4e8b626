"""finetune.compute.hf: the Hugging Face adapter reproduces model.py, saves/loads, works with Auto, pipeline, Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from nanogpt_fixtures import sib200_texts, tiny_pretrained, write_nanogpt_checkpoint  # noqa: F401
from torch.nn import functional as F

from finetune.compute.hf import (
    NanoGPTConfig,
    NanoGPTForCausalLM,
    NanoGPTForSequenceClassification,
    NanoGPTModel,
)
from finetune.compute.model import CheckpointError, load_gpt, transformer_hidden

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "models" / "m" / "ckpt.pt"
    write_nanogpt_checkpoint(path, n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=100, bias=True)
    return path


def test_causal_lm_logits_equal_model_py_exactly(ckpt):
    gpt = load_gpt(ckpt)
    lm = NanoGPTForCausalLM.from_nanogpt(ckpt).eval()
    idx = torch.randint(0, 100, (3, 17))
    full = gpt.lm_head(transformer_hidden(gpt.transformer, idx))
    assert torch.equal(lm(idx).logits, full)
    assert lm.lm_head.weight is lm.transformer.wte.weight
    # the HF loss is the nanoGPT loss of the shifted sequence
    out = lm(idx, labels=idx)
    _, nano_loss = gpt(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(out.loss, nano_loss)


def test_state_dict_keys_are_nanogpts(ckpt):
    lm = NanoGPTForCausalLM.from_nanogpt(ckpt)
    assert set(lm.state_dict()) == set(load_gpt(ckpt).state_dict())
    clf = NanoGPTForSequenceClassification.from_nanogpt(ckpt, 3)
    assert set(clf.state_dict()) - set(lm.state_dict()) == {"score.weight"}


def test_classification_pools_at_the_last_real_token(ckpt):
    clf = NanoGPTForSequenceClassification.from_nanogpt(ckpt, 4, pad_token_id=0).eval()
    a, b = torch.randint(1, 100, (1, 7)), torch.randint(1, 100, (1, 4))
    batch = torch.zeros(2, 7, dtype=torch.long)
    batch[0], batch[1, :4] = a[0], b[0]
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    logits = clf(batch, attention_mask=mask).logits
    torch.testing.assert_close(logits[0], clf(a).logits[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits[1], clf(b).logits[0], rtol=1e-5, atol=1e-6)
    hidden = NanoGPTModel.from_nanogpt(ckpt)(b).last_hidden_state
    torch.testing.assert_close(clf(b).logits, clf.score(hidden[:, -1]))


def test_single_and_multi_label_losses(ckpt):
    torch.manual_seed(0)
    x = torch.randint(0, 100, (4, 6))
    single = NanoGPTForSequenceClassification.from_nanogpt(ckpt, 3).eval()
    labels = torch.tensor([0, 2, 1, 2])
    out = single(x, labels=labels)
    assert single.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))

    multi = NanoGPTForSequenceClassification.from_nanogpt(ckpt, 3, problem_type="multi_label_classification").eval()
    targets = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float)
    out = multi(x, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))


def test_overriding_sizes_fixed_by_the_checkpoint_is_an_error(ckpt):
    with pytest.raises(CheckpointError) as err:
        NanoGPTForSequenceClassification.from_nanogpt(ckpt, 2, n_embd=64, block_size=8)
    assert {p.path for p in err.value.problems} == {"$.model_args.n_embd", "$.model_args.block_size"}
    # dropout is a training choice, not a size
    assert NanoGPTForSequenceClassification.from_nanogpt(ckpt, 2, dropout=0.2).config.dropout == 0.2


@pytest.mark.parametrize("cls", [NanoGPTForSequenceClassification, NanoGPTForCausalLM])
def test_save_pretrained_round_trip_is_exact_and_uses_safetensors(ckpt, tmp_path, cls):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    model = cls.from_nanogpt(ckpt, **({"num_labels": 5} if cls is NanoGPTForSequenceClassification else {})).eval()
    out = tmp_path / "hf"
    model.save_pretrained(out)
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nanogpt" and config["n_embd"] == 32
    auto = AutoModelForSequenceClassification if cls is NanoGPTForSequenceClassification else AutoModelForCausalLM
    loaded = auto.from_pretrained(out).eval()
    assert type(loaded) is cls and isinstance(AutoConfig.from_pretrained(out), NanoGPTConfig)
    x = torch.randint(0, 100, (2, 11))
    assert torch.equal(loaded(x).logits, model(x).logits)
    if cls is NanoGPTForCausalLM:
        assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_auto_model_loads_the_trunk_of_a_classifier(ckpt, tmp_path):
    from transformers import AutoModel

    clf = NanoGPTForSequenceClassification.from_nanogpt(ckpt, 2)
    clf.save_pretrained(tmp_path / "hf")
    trunk = AutoModel.from_pretrained(tmp_path / "hf")
    assert type(trunk) is NanoGPTModel
    x = torch.randint(0, 100, (1, 5))
    assert torch.equal(trunk(x).last_hidden_state, clf.transformer(x).last_hidden_state)


def test_greedy_generate_matches_nanogpt_argmax_loop(ckpt):
    gpt = load_gpt(ckpt)
    lm = NanoGPTForCausalLM.from_nanogpt(ckpt, eos_token_id=None, pad_token_id=0).eval()
    prompt = torch.tensor([[5, 17, 42]])
    generated = lm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    seq = prompt
    for _ in range(6):
        logits, _ = gpt(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq)


def test_pipeline_and_trust_remote_code_on_a_converted_directory(tiny_pretrained, tmp_path):  # noqa: F811
    from transformers import pipeline

    from finetune.compute.convert import convert

    ckpt, prefix = tiny_pretrained
    out = tmp_path / "clf"
    convert(ckpt, out, task="classification", labels=["sports", "travel", "health"], tokenizer=prefix)
    clf = pipeline("text-classification", model=str(out))
    preds = clf(["Сборная России выиграла матч.", "Pociąg do Krakowa odjeżdża o ósmej."])
    assert [p["label"] in {"sports", "travel", "health"} for p in preds] == [True, True]
    assert all(0.0 < p["score"] <= 1.0 for p in preds)

    # the directory is self-describing: loadable in a fresh Python that never imports finetune
    code = (
        "import sys\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        "print(type(m).__module__, type(m).__name__, m.config.id2label[0])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["finetune.compute.hf", "NanoGPTForSequenceClassification", "sports"]


def test_plain_import_finetune_registers_auto_classes_without_importing_torch(tiny_pretrained, tmp_path):  # noqa: F811
    from finetune.compute.convert import convert

    out = tmp_path / "clf"
    convert(tiny_pretrained[0], out, task="classification", num_labels=2, tokenizer=tiny_pretrained[1])
    code = (
        "import sys\n"
        "import finetune\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "assert not [m for m in sys.modules if m.startswith('finetune.compute')]\n"  # the hook is finetune.autoregister
        "from transformers import AutoModelForSequenceClassification\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r})\n"
        "print(type(m).__name__)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["NanoGPTForSequenceClassification"]


def test_transformers_trainer_trains_the_classifier(tiny_pretrained, tmp_path):  # noqa: F811
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from finetune.compute.tokenizer import load_tokenizer

    ckpt, prefix = tiny_pretrained
    tok = load_tokenizer(prefix)
    texts = sib200_texts(("rus_Cyrl", "pol_Latn"), per_language=8)
    labels = [0] * 8 + [1] * 8  # the language: learnable from the script alone
    ds = Dataset.from_dict({"text": texts, "label": labels}).map(
        lambda b: tok(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"]
    )
    model = NanoGPTForSequenceClassification.from_nanogpt(ckpt, 2, pad_token_id=tok.pad_token_id)
    before = model.score.weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=8, num_train_epochs=6,
        learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert not torch.equal(before, model.score.weight.detach())
