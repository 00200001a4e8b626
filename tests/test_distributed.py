"""Rank and world from torchrun's and SLURM's variables; DDP and FSDP2 on CPU agree with one process.

The multi-process tests start two real processes with torchrun (gloo on CPU): one process with
two accumulation steps and two processes with one each see the same global batches, so their
evaluations and final weights agree to float rounding. FSDP2 is also preempted (SIGUSR2 on rank
0 only, so the stop must be agreed over the group) and resumed from its sharded checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer import config_for, make_trial, metric_lines, run_in_process, same_run, write_sib_slice

from finetune.compute.distributed import (
    DistEnv,
    expand_nodelist,
    from_environ,
    resolve_strategy,
    slurm_port,
    transformer_blocks,
)
from finetune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

# --- environment parsing (pure) ---------------------------------------------------------------------


def _no_scontrol(nodelist: str) -> str:
    return expand_nodelist(nodelist)[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, DistEnv()),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "1234"},
         DistEnv(3, 8, 1, "node7", 1234, "torchrun")),
        # torchrun wins over the SLURM allocation it runs in
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400",
          "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_NODELIST": "gpu01"},
         DistEnv(1, 2, 1, "127.0.0.1", 29400, "torchrun")),
        # an srun step of 4 tasks over two nodes
        ({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0",
          "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"},
         DistEnv(2, 4, 0, "gpu07", slurm_port("4242"), "slurm")),
        # MASTER_ADDR/PORT exported by the batch script take precedence
        ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1", "SLURM_NODELIST": "n1",
          "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "5555"},
         DistEnv(1, 2, 1, "10.0.0.5", 5555, "slurm")),
        # the batch script itself (no srun step) is one process even when the job has 4 tasks
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "9"}, DistEnv()),
    ],
)
def test_from_environ(env, expected):
    assert from_environ(env, hostnames=_no_scontrol) == expected


def test_from_environ_names_the_bad_variable():
    with pytest.raises(ConfigError, match=r"\$SLURM_PROCID"):
        from_environ({"SLURM_PROCID": "x", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NODELIST": "n1"}, hostnames=_no_scontrol)


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node1", ["node1"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a[9-10],b3,c[1,3]-ib", ["a9", "a10", "b3", "c1-ib", "c3-ib"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_slurm_port_is_shared_by_the_job_and_differs_between_jobs():
    assert slurm_port("100") == slurm_port("100") != slurm_port("101")
    assert 1024 < slurm_port("123456789") < 65536


@pytest.mark.parametrize(
    ("strategy", "world", "resolved"),
    [("auto", 1, "single"), ("ddp", 1, "single"), ("fsdp", 1, "single"), ("auto", 2, "ddp"), ("fsdp", 4, "fsdp")],
)
def test_resolve_strategy(strategy, world, resolved):
    assert resolve_strategy(strategy, world) == resolved


def test_fsdp_shards_each_transformer_block(tiny_pretrained):  # noqa: F811
    from finetune.compute.hf import NanoGPTForSequenceClassification

    model = NanoGPTForSequenceClassification.from_nanogpt(tiny_pretrained[0], 7)
    blocks = transformer_blocks(model)
    assert len(blocks) == model.config.n_layer and {type(b).__name__ for b in blocks} == {"Block"}


# --- two processes on CPU ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_pretrained, sib200_dir):  # noqa: F811
    ckpt, tokenizer = tiny_pretrained
    root = tmp_path_factory.mktemp("distributed")
    data = write_sib_slice(root / "sib", sib200_dir)
    return {"ckpt": ckpt, "tokenizer": tokenizer, "data": data, "cache": root / "cache", "root": root}


def _config(setup: dict, trial_id: str, strategy: str) -> dict:
    # batch 16 as 2 micro batches of 8: accumulation in one process, one each in two. No dropout:
    # each process draws its own dropout masks, so only dropout-free runs can agree to rounding.
    return config_for(setup, trial_id, hyperparameters={"micro_batch_size": 8, "max_steps": 8, "dropout": 0.0},
                      training={"strategy": strategy, "eval_interval": 4, "checkpoint_interval": 100})


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def single(setup) -> Path:
    trial = make_trial(setup["root"] / "single", _config(setup, "same", "auto"))
    assert run_in_process(trial) == 0
    return trial


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_agree_with_one(setup, single, strategy):
    trial = make_trial(setup["root"] / strategy, _config(setup, "same", strategy))
    done = _torchrun("-m", "finetune.compute.trainer", str(trial))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((trial / "result.json").read_text())
    assert (result["strategy"], result["world_size"]) == (strategy, 2)
    assert f"{strategy} on 2 x cpu" in done.stderr
    # rounding differs (gradients are reduced over processes), the run does not
    same_run(single, trial, atol=1e-5)
    assert [line["step"] for line in metric_lines(trial)] == [4, 8]


PREEMPT = """
import os, signal, sys
from finetune.compute import trainer

def hook(step):
    if step == int(sys.argv[2]) and os.environ["RANK"] == "0":  # rank 0 only: the stop is agreed
        os.kill(os.getpid(), signal.SIGUSR2)

sys.exit(trainer.run(sys.argv[1], on_step=hook))
"""


def test_fsdp_preempted_and_resumed_from_sharded_checkpoint(setup, tmp_path):
    reference = setup["root"] / "fsdp" / "same"
    if not (reference / "result.json").exists():
        pytest.skip("needs test_two_processes_agree_with_one[fsdp]")
    script = tmp_path / "preempt.py"
    script.write_text(PREEMPT)
    trial = make_trial(setup["root"] / "fsdp-resume", _config(setup, "same", "fsdp"))
    stopped = _torchrun(str(script), str(trial), "3")
    assert stopped.returncode != 0  # torchrun reports the workers' exit 75 as a failure
    assert json.loads((trial / "state.json").read_text())["state"] == "preempted"
    latest = trial / "checkpoints" / "latest.json"
    assert json.loads(latest.read_text())["step"] == 3
    shards = sorted(p.name for p in (trial / "checkpoints" / "step-00000003").iterdir())
    assert "rank0.pt" in shards and "rank1.pt" in shards and any(n.endswith(".distcp") for n in shards)
    done = _torchrun("-m", "finetune.compute.trainer", str(trial))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "at step 3" in done.stderr
    same_run(reference, trial, atol=1e-6)


def _lora_config(setup: dict, strategy: str) -> dict:
    cfg = _config(setup, "lora", strategy)
    cfg["hyperparameters"].update({"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                   "lora_targets": ["c_attn", "c_proj", "c_fc"]})
    cfg["training"]["checkpoint_interval"] = 3
    return cfg


@pytest.fixture(scope="module")
def single_lora(setup) -> Path:
    trial = make_trial(setup["root"] / "single-lora", _lora_config(setup, "auto"))
    assert run_in_process(trial) == 0
    return trial


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_lora_two_processes_agree_with_one(setup, single_lora, strategy):
    """LoRA adapters (peft) under DDP and FSDP2 on gloo: the run of one process, the adapter
    checkpointed alone (sharded under FSDP) and saved by rank 0."""
    import torch
    from safetensors.torch import load_file

    trial = make_trial(setup["root"] / f"{strategy}-lora", _lora_config(setup, strategy))
    done = _torchrun("-m", "finetune.compute.trainer", str(trial))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((t / "result.json").read_text()) for t in (single_lora, trial))
    assert (two["strategy"], two["world_size"]) == (strategy, 2)
    assert two["parameters"] == one["parameters"] and two["parameters"]["trainable"] < two["parameters"]["total"]
    for lang, splits in one["metrics"].items():
        for split, values in splits.items():
            for key, value in values.items():
                assert two["metrics"][lang][split][key] == pytest.approx(value, abs=1e-5), (lang, split, key)
    wa = load_file(str(single_lora / "model" / "adapter_model.safetensors"))
    wb = load_file(str(trial / "model" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and any("lora_A" in k for k in wa) and any("score" in k for k in wa)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=1e-5, rtol=0)
