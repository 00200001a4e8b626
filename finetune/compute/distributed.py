"""Who am I in the job: rank, world size and master from torchrun's or SLURM's environment.

One entry point serves ``torchrun`` and ``srun``: :func:`from_environ` reads torchrun's
variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) first and SLURM's
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODELIST) otherwise. Parsing is pure (it takes
a mapping), so it is tested without a cluster. The process group and the FSDP2/DDP wrapping
happen in the functions below, which import torch when called.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finetune.errors import ConfigError, Problem

STRATEGIES = ("auto", "single", "ddp", "fsdp")
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    source: str = "single"  # "torchrun" | "slurm" | "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(problems=[Problem(f"${name}", "", f"expected an integer, got {value!r}")]) from None


def from_environ(env: Mapping[str, str] | None = None, *, hostnames=None) -> DistEnv:
    """Read the process's place from torchrun's variables, else SLURM's, else single process.

    Under SLURM only a job step started by ``srun`` has several tasks (``SLURM_STEP_NUM_TASKS``);
    a batch script that runs the trainer directly is one process even when the allocation asked
    for more tasks, so that case is a single process rather than a rank waiting for peers.
    ``hostnames`` expands a SLURM node list (default: :func:`first_host`).
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=_int(env, "RANK"),
            world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_PORT,
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or ((hostnames or first_host)(nodelist) if nodelist else "127.0.0.1")
        return DistEnv(
            rank=_int(env, "SLURM_PROCID"),
            world_size=world,
            local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=addr,
            master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else slurm_port(env.get("SLURM_JOB_ID")),
            source="slurm",
        )
    return DistEnv()


def slurm_port(job_id: str | None) -> int:
    """A port every task of the job derives alike, spread by job id so jobs sharing a node differ."""
    try:
        return DEFAULT_PORT + 1 + int(job_id or 0) % 20000
    except ValueError:
        return DEFAULT_PORT


_RANGE = re.compile(r"^(?P<prefix>[^\[,]*)\[(?P<body>[^\]]+)\](?P<suffix>.*)$")


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list such as ``node[01-03,07],gpu5`` (one bracket group per name)."""
    hosts: list[str] = []
    for name in _split_top_level(nodelist):
        m = _RANGE.match(name)
        if not m:
            hosts.append(name)
            continue
        for part in m.group("body").split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(f"{m.group('prefix')}{lo}{m.group('suffix')}")
                continue
            width = len(lo)
            for i in range(int(lo), int(hi) + 1):
                hosts.append(f"{m.group('prefix')}{i:0{width}d}{m.group('suffix')}")
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    parts.append(nodelist[start:])
    return [p.strip() for p in parts if p.strip()]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``scontrol show hostnames`` when present, else our parser."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run(
                [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
            ).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return expand_nodelist(nodelist)[0]


def resolve_strategy(strategy: str, world_size: int, *, file: str = "config") -> str:
    """``auto`` is single for one process and DDP for several; one process never wraps."""
    if strategy not in STRATEGIES:
        raise ConfigError(problems=[Problem(file, "$.training.strategy", f"must be one of {', '.join(STRATEGIES)}")])
    if world_size == 1:
        return "single"
    if strategy == "single":
        raise ConfigError(
            problems=[Problem(file, "$.training.strategy", f"is 'single' but {world_size} processes were started")]
        )
    return "ddp" if strategy == "auto" else strategy


# --- side effects: devices, the process group, wrapping -------------------------------------------


def pick_device(requested: str, env: DistEnv) -> Any:
    """``auto`` -> ``cuda:LOCAL_RANK`` when a GPU is visible, else ``cpu``."""
    import torch

    if requested in ("auto", None):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    unavailable = ((device.type == "cuda" and not torch.cuda.is_available())
                   or (device.type == "mps" and not torch.backends.mps.is_available()))
    if unavailable:
        from finetune.errors import ConfigError, Problem

        raise ConfigError(problems=[Problem("config.json", "$.training.device",
                                            f"{requested!r} is not available on this machine; use auto or cpu")])
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return device


def init_process_group(env: DistEnv, device: Any, *, timeout_s: float = 1800) -> None:
    """gloo on CPU, nccl on GPU; rendezvous over TCP at the master from the environment."""
    import datetime

    import torch.distributed as dist

    if not env.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(
        backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def transformer_blocks(model: Any) -> list[Any]:
    """The repeated blocks to shard one by one: HF's ``_no_split_modules`` names them."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        blocks = [m for m in model.modules() if type(m).__name__.endswith("Block")]
    return blocks


def wrap(model: Any, strategy: str, device: Any) -> Any:
    """DDP wraps the model; FSDP2 shards each transformer block, then the root (in place)."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    return model


def unwrap(model: Any) -> Any:
    """The user module under DDP (FSDP2 shards in place) and torch.compile."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def all_max(value: int, env: DistEnv) -> int:
    """The largest of ``value`` over all ranks (one tiny all-reduce; identity for one process)."""
    if not env.distributed:
        return value
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


# --- sharded evaluation ------------------------------------------------------------------------------


def shard(items: list[Any], env: DistEnv, *, even: bool = False) -> list[Any | None]:
    """This rank's share of ``items``: every ``world_size``-th one, starting at its rank.

    Whole items (evaluation batches) are dealt out, never split, so each is computed exactly as
    one process computes it. ``even``: every rank gets the same number of entries, ``None``
    standing in where it has none left (under FSDP every rank must run every forward: a rank
    with a ``None`` runs a throw-away batch).
    """
    mine: list[Any | None] = list(items[env.rank::env.world_size])
    if even:
        per_rank = -(-len(items) // env.world_size)
        mine += [None] * (per_rank - len(mine))
    return mine


def gather_batches(parts: list[tuple[int, Any]], env: DistEnv, *, n_batches: int) -> list[Any]:
    """Put the batches every rank computed back together, on every rank.

    ``parts``: this rank's ``(batch number, payload)`` pairs. Returns the ``n_batches`` payloads in
    batch order, each exactly as the rank that computed it had it (one all_gather_object; no
    communication for one process). Every batch must come from exactly one rank.
    """
    every = [parts]
    if env.distributed:
        import torch.distributed as dist

        every = [None] * env.world_size
        dist.all_gather_object(every, parts)
    out: list[Any] = [None] * n_batches
    seen = [0] * n_batches
    for rank_parts in every:
        for b, payload in rank_parts:
            out[b] = payload
            seen[b] += 1
    missing, doubled = sum(1 for k in seen if k == 0), sum(1 for k in seen if k > 1)
    if missing or doubled:
        raise ValueError(f"gather_batches: {missing} batches computed by no rank, {doubled} by several")
    return out
