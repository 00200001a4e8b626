"""Dealing evaluation batches out to ranks and gathering them back: one process; two gloo
processes for question answering and causal LM (classification's 2-node run is in test_multinode.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from task_fixtures import write_squad, write_text
from test_trainer_tasks import config

from finetune.compute.distributed import DistEnv, gather_batches, shard


def test_shard_deals_whole_batches_round_robin():
    batches = [[0, 1], [2], [3, 4], [5], [6]]
    assert shard(batches, DistEnv(0, 2)) == [[0, 1], [3, 4], [6]]
    assert shard(batches, DistEnv(1, 2)) == [[2], [5]]
    assert shard(batches, DistEnv(1, 2), even=True) == [[2], [5], None]  # FSDP: same number of forwards
    assert shard(batches, DistEnv()) == batches
    assert shard([], DistEnv(1, 3), even=True) == []
    # every batch exactly once over the ranks
    dealt = [b for r in range(3) for b in shard(batches, DistEnv(r, 3), even=True) if b is not None]
    assert sorted(map(tuple, dealt)) == sorted(map(tuple, batches))


def test_gather_batches_one_process_puts_batches_in_order():
    parts = [(2, np.array([3.0, 3.5])), (0, "first"), (1, (1.5, [np.zeros(2)]))]
    out = gather_batches(parts, DistEnv(), n_batches=3)
    assert out[0] == "first" and out[1][0] == 1.5 and out[2].tolist() == [3.0, 3.5]
    assert gather_batches([], DistEnv(), n_batches=0) == []


def test_gather_batches_refuses_missing_or_doubled_batches():
    with pytest.raises(ValueError, match="1 batches computed by no rank"):
        gather_batches([(0, 1.0)], DistEnv(), n_batches=2)
    with pytest.raises(ValueError, match="1 by several"):
        gather_batches([(0, 1.0)] * 2, DistEnv(), n_batches=1)


# --- question answering and causal LM, 2 gloo processes (torchrun) ---------------------------------


def test_qa_and_causal_lm_sharded_equal_unsharded(tmp_path, tiny_pretrained):  # noqa: F811
    """Each rank predicts its share of the real eval windows/chunks; the gathered answers, losses
    and metrics equal those of one process predicting everything, exactly (plain and FSDP2)."""
    data = {"root": tmp_path, "ckpt": tiny_pretrained[0], "tok": tiny_pretrained[1]}
    files = []
    for kind, folder in (("question-answering", "qa"), ("causal-lm", "text")):
        for lang in ("russian", "polish"):
            (write_squad if folder == "qa" else write_text)(tmp_path / folder / lang, lang)
        cfg = config(data, kind, kind, training={"eval_batch_size": 3})  # odd batch counts: lockstep pads
        files.append(tmp_path / f"{kind}.json")
        files[-1].write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(Path(__file__).parent / "sharded_task_eval_check.py"), str(tmp_path / "out"),
                           *map(str, files)], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    keys = {f"{kind}-{lang}" for kind in ("question-answering", "causal-lm") for lang in ("russian", "polish")}
    assert all(set(r) - {"rank", "world_size"} == keys and r["world_size"] == 2 for r in ranks)
    for key in keys:
        r0, r1 = ranks[0][key], ranks[1][key]
        # each rank ran only its share of the batches, and both worked
        assert r0["batches"] >= 3 and r0["forwards"] + r1["forwards"] == r0["batches"]
        assert (r0["forwards"], r1["forwards"]) == (r0["share"], r1["share"]) and r1["forwards"] > 0
        for r in (r0, r1):
            assert r["equal"] and r["equal_fsdp"] and r["metrics_equal"], key
        assert r0["metrics"] == r1["metrics"]  # every rank holds the whole result
        assert r0["metrics_fsdp"] == pytest.approx(r0["metrics"], abs=1e-5)
        names = {"exact_match", "f1", "loss"} if key.startswith("question") else {"loss", "perplexity"}
        assert set(r0["metrics"]) == names
