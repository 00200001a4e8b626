"""Run by tests/test_sharded_eval.py on both ranks of a 2-process torchrun (gloo); not a test module.

    sharded_task_eval_check.py OUT_DIR CONFIG [CONFIG ...]

For each trial config (question answering, causal LM), loads the task's real eval rows and
model, predicts them unsharded (every rank every batch) and sharded (each rank its share,
gathered), for the plain model and for an FSDP2-sharded copy (lockstep forwards), and writes
OUT_DIR/rank<r>.json: per config, whether predictions and metrics equal the unsharded ones
exactly, and how many forwards this rank ran.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from finetune.compute import distributed as dist_env
from finetune.compute.batching import LengthGroupedBatchSampler
from finetune.compute.model import load_checkpoint
from finetune.compute.training.settings import settings_from_config
from finetune.compute.training.tasks import task_for


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def main() -> int:
    out, configs = Path(sys.argv[1]), sys.argv[2:]
    env = dist_env.from_environ()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    dist_env.init_process_group(env, device)
    kw = {"device": device, "autocast": contextlib.nullcontext}
    report: dict = {"rank": env.rank, "world_size": env.world_size}
    for file in configs:
        config = json.loads(Path(file).read_text())
        task = task_for(config, settings_from_config(config, 1, file=file), file=file)
        loaded = load_checkpoint(config["checkpoint"])
        data = task.load_data(loaded[0].block_size)
        torch.manual_seed(0)  # the same new head on every rank
        model = task.build_model(loaded).eval()
        fsdp = dist_env.wrap(copy.deepcopy(model), "fsdp", device)
        for lang, rows in data.eval.items():
            full = task.predict(model, rows, **kw)
            calls: list[int] = []
            hook = model.register_forward_hook(lambda *_, seen=calls: seen.append(1))
            sharded = task.predict(model, rows, env=env, **kw)
            hook.remove()
            full_fsdp = task.predict(fsdp, rows, **kw)  # every rank every batch: FSDP's forwards line up
            sharded_fsdp = task.predict(fsdp, rows, env=env, lockstep=True, **kw)
            batches = LengthGroupedBatchSampler(rows.lengths(), task.s.eval_batch_size, shuffle=False).batches()
            report[f"{config['id']}-{lang}"] = {
                "batches": len(batches),
                "share": len([b for b in dist_env.shard(batches, env) if b is not None]),
                "forwards": len(calls),  # what this rank ran when sharded
                "equal": same(full, sharded), "equal_fsdp": same(full_fsdp, sharded_fsdp),
                "metrics": task.metrics(*sharded), "metrics_equal": task.metrics(*full) == task.metrics(*sharded),
                "metrics_fsdp": task.metrics(*sharded_fsdp),
            }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{env.rank}.json").write_text(json.dumps(report))
    dist_env.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
