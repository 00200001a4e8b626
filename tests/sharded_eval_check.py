"""Run by tests/test_multinode.py on every rank of a 2-node srun step (not a test module itself).

    sharded_eval_check.py CKPT OUT_DIR

Predicts the same rows with the same model unsharded (every rank every batch) and sharded (each
rank its share, gathered), for the plain model (DDP evaluates the unwrapped module) and for an
FSDP2-sharded copy (lockstep forwards), and writes OUT_DIR/rank<r>.json: whether the gathered
logits and the metrics equal the unsharded ones exactly, how many rows this rank computed, where.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from finetune.compute import distributed as dist_env
from finetune.compute.batching import LengthGroupedBatchSampler
from finetune.compute.hf import NanoGPTForSequenceClassification
from finetune.compute.training.task import ClassificationTask, Rows

CLASSES = 7


def main() -> int:
    ckpt, out = sys.argv[1], Path(sys.argv[2])
    env = dist_env.from_environ()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    dist_env.init_process_group(env, device)
    torch.manual_seed(0)  # the same new head on every rank
    model = NanoGPTForSequenceClassification.from_nanogpt(ckpt, CLASSES).eval()
    rng = np.random.default_rng(0)
    n = 53  # 7 batches of 8 (the last short): the ranks get 4 and 3
    rows = Rows([[int(t) for t in rng.integers(1, 400, size=int(k))] for k in rng.integers(3, 60, size=n)],
                [int(y) for y in rng.integers(0, CLASSES, size=n)])
    task = ClassificationTask.__new__(ClassificationTask)  # the task without a config: model and rows given
    task.s, task.pad_id, task.label_names = SimpleNamespace(eval_batch_size=8), 0, [str(i) for i in range(CLASSES)]
    kw = {"device": device, "autocast": contextlib.nullcontext}

    full, labels = task.predict(model, rows, **kw)
    sharded, labels2 = task.predict(model, rows, env=env, **kw)
    fsdp = dist_env.wrap(copy.deepcopy(model), "fsdp", device)
    full_fsdp, _ = task.predict(fsdp, rows, **kw)  # every rank every batch: FSDP's forwards line up
    sharded_fsdp, _ = task.predict(fsdp, rows, env=env, lockstep=True, **kw)
    batches = LengthGroupedBatchSampler(rows.lengths(), 8, shuffle=False).batches()
    mine = sum(len(b) for b in dist_env.shard(batches, env) if b is not None)
    report = {
        "rank": env.rank, "world_size": env.world_size, "host": socket.gethostname(), "rows": n, "computed": mine,
        "equal": bool(np.array_equal(full, sharded) and np.array_equal(labels, labels2)),
        "equal_fsdp": bool(np.array_equal(full_fsdp, sharded_fsdp)),
        "fsdp_matches_plain": bool(np.allclose(full, full_fsdp, atol=1e-5)),
        "metrics_equal": task.metrics(full, labels) == task.metrics(sharded, labels),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{env.rank}.json").write_text(json.dumps(report))
    dist_env.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
