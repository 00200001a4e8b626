"""4-bit QLoRA (lora_4bit): the quantization config, the refusals (file and JSON path), and the real
path — transformers' BitsAndBytesConfig load of our registered nanoGPT class, peft's
prepare_model_for_kbit_training, adapters — trained by the real trainer on CPU through
bitsandbytes' CPU kernels (the trainer refuses CPU for QLoRA; the test lifts only that gate).
No GPU ran this: CUDA training itself is not covered here."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer_tasks import assert_same, config, data, lines, make_trial, preempt_at, run  # noqa: F401

from finetune.compute.training import lora
from finetune.errors import ConfigError

LORA = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_targets": ["c_attn", "c_proj", "c_fc"]}


def test_quantization_config_is_the_qlora_recipe():
    q = lora.quantization_config(compute_dtype=torch.bfloat16, skip_modules=("qa_outputs",))
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert q.llm_int8_skip_modules == ["qa_outputs", "lm_head"]  # heads stay full precision
    assert lora.quantization_config(compute_dtype=torch.float32, skip_modules=("lm_head",)).llm_int8_skip_modules == [
        "lm_head"]


def test_qlora_refusals_name_the_file_and_json_path(monkeypatch):
    cfg = {"hyperparameters": {**LORA, "lora_4bit": True}}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes"
                        else real_find_spec(name, *a))
    with pytest.raises(ConfigError) as e:
        lora.lora_settings(cfg, file="trials/x/config.json")
    [p] = e.value.problems
    assert (p.file, p.path) == ("trials/x/config.json", "$.hyperparameters.lora_4bit")
    assert "needs bitsandbytes" in p.message and "pip install bitsandbytes" in p.message
    monkeypatch.undo()
    assert lora.lora_settings(cfg, file="c.json").four_bit  # bitsandbytes is installed here
    with pytest.raises(ConfigError) as e:
        lora.check_qlora(device=torch.device("cpu"), strategy="fsdp", file="c.json")
    assert [(p.path, p.message.split(" (")[0]) for p in e.value.problems] == [
        ("$.hyperparameters.lora_4bit", "4-bit QLoRA needs CUDA"),
        ("$.training.strategy", "4-bit QLoRA does not run under fsdp here")]
    assert "runs on cpu" in e.value.problems[0].message
    lora.check_qlora(device=torch.device("cuda", 0), strategy="ddp", file="c.json")  # nothing to say


def test_trainer_refuses_qlora_on_cpu(data, tmp_path):  # noqa: F811
    trial = make_trial(tmp_path, config(data, "causal-lm", "qlora", hp={**LORA, "lora_4bit": True}))
    assert run(trial) == 2
    reason = json.loads((trial / "state.json").read_text())["reason"]
    assert "$.hyperparameters.lora_4bit" in reason and "needs CUDA" in reason
    assert not (trial / "result.json").exists() and not (trial / "checkpoints").exists()


def test_qlora_trains_on_the_4bit_base_and_resumes_exactly(data, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(lora, "QLORA_DEVICE_TYPES", ("cuda", "cpu"))  # bitsandbytes' CPU kernels stand in
    loaded = []
    real_load = lora.load_4bit

    def spy(model, **kw):
        quantized = real_load(model, **kw)
        loaded.append(quantized)
        return quantized

    monkeypatch.setattr(lora, "load_4bit", spy)
    full = make_trial(tmp_path / "lora", config(data, "question-answering", "lora", hp=LORA))
    assert run(full) == 0
    cfg = config(data, "question-answering", "qlora", hp={**LORA, "lora_4bit": True})
    ref = make_trial(tmp_path / "ref", cfg)
    assert run(ref) == 0
    import bitsandbytes as bnb

    model = loaded[0]  # (peft put its adapters in place since)
    c_attn = model.transformer.h[0].attn.c_attn.base_layer
    assert isinstance(c_attn, bnb.nn.Linear4bit) and c_attn.weight.quant_state.quant_type == "nf4"
    head = model.qa_outputs.original_module  # peft's modules_to_save copy trains; both full precision
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32
    result, lora_result = (json.loads((t / "result.json").read_text()) for t in (ref, full))
    # the same adapters train; the 4-bit base holds as many weights
    assert result["parameters"] == lora_result["parameters"]
    assert set(result["metrics"]["russian"]["eval"]) == {"loss", "exact_match", "f1"}
    # quantized weights: another run, close to the full-precision one
    losses, lora_losses = ([x["train_loss"] for x in lines(t)[::2]] for t in (ref, full))
    assert losses != lora_losses and losses == pytest.approx(lora_losses, rel=0.05)
    assert (ref / "model" / "adapter_config.json").is_file() and not (ref / "model" / "model.safetensors").exists()
    # preempted (USR2) and resumed from checkpoints holding only the adapters and head: the same run
    again = make_trial(tmp_path / "again", cfg)
    assert run(again, on_step=preempt_at(3)) == 75
    assert run(again) == 0
    assert_same(ref, again)
    # `finetune evaluate` puts the adapter on the same 4-bit base: the reported numbers again
    from finetune.compute.evaluate import evaluate_trial

    scored = evaluate_trial(ref, ["russian"], threads=1)
    assert scored["russian"]["eval"] == pytest.approx(result["metrics"]["russian"]["eval"], abs=1e-6)
