"""Settings: the trial config's hyperparameters and training options, checked, as a typed object.

A pure function of the frozen trial config and the world size; derived values (micro batch,
accumulation steps, the resolved strategy) are computed here so the loop only reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune import layout
from finetune.analysis.results import SELECTIONS
from finetune.compute import distributed as dist_env
from finetune.errors import ConfigError, Problem
from finetune.login.tasks import ALL_METRICS

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Settings:
    learning_rate: float
    batch_size: int  # global, in rows
    micro_batch_size: int  # per forward pass of one process
    accumulation: int  # micro batches per process per optimizer step
    epochs: float | None
    max_steps: int | None
    warmup_ratio: float
    scheduler: str
    weight_decay: float
    gradient_clipping: float | None
    seed: int
    dropout: float
    strategy: str  # single | ddp | fsdp (resolved)
    precision: str  # auto | fp32 | bf16 | fp16 (resolved against the device in setup)
    compile: bool
    eval_interval: int | None
    checkpoint_interval: int | None
    metric: str
    device: str
    num_workers: int
    eval_batch_size: int
    log_interval: int
    selection: str = "train-languages"  # SELECTIONS: which eval languages choose the best checkpoint

    @property
    def virtual_ranks(self) -> int:
        return self.batch_size // self.micro_batch_size


def settings_from_config(config: dict[str, Any], world_size: int = 1, *, file: str = layout.CONFIG_FILE) -> Settings:
    """Check every hyperparameter and training option at once; raise ConfigError listing all."""
    hp = config.get("hyperparameters") or {}
    tr = config.get("training") or {}
    problems: list[Problem] = []

    def get(section: dict, prefix: str, key: str, default: Any, ok: Callable[[Any], bool], want: str) -> Any:
        value = section.get(key, default)
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            problems.append(Problem(file, f"$.{prefix}.{key}", f"must be {want}, got {value!r}"))
            return default
        return value

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    H, T = "hyperparameters", "training"
    lr = get(hp, H, "learning_rate", 5e-5, lambda v: is_num(v) and v > 0, "a positive number")
    batch = get(hp, H, "batch_size", 32, lambda v: is_int(v) and v >= 1, "a positive integer")
    micro = get(hp, H, "micro_batch_size", None, lambda v: v is None or (is_int(v) and v >= 1),
                "null or a positive integer")
    epochs = get(hp, H, "epochs", None, lambda v: v is None or (is_num(v) and v > 0), "null or a positive number")
    max_steps = get(hp, H, "max_steps", None, lambda v: v is None or (is_int(v) and v >= 1),
                    "null or a positive integer")
    warmup = get(hp, H, "warmup_ratio", 0.0, lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
    scheduler = get(hp, H, "scheduler", "linear", lambda v: v in SCHEDULERS, " or ".join(SCHEDULERS))
    wd = get(hp, H, "weight_decay", 0.0, lambda v: is_num(v) and v >= 0, "a non-negative number")
    clip = get(hp, H, "gradient_clipping", None, lambda v: v is None or (is_num(v) and v >= 0),
               "null or a non-negative number")
    seed = get(hp, H, "seed", 42, is_int, "an integer")
    dropout = get(hp, H, "dropout", 0.0, lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
    strategy = get(tr, T, "strategy", "auto", lambda v: v in dist_env.STRATEGIES, " or ".join(dist_env.STRATEGIES))
    precision = get(tr, T, "precision", "auto", lambda v: v in PRECISIONS, " or ".join(PRECISIONS))
    compile_ = get(tr, T, "compile", False, lambda v: isinstance(v, bool), "true or false")
    eval_interval = get(tr, T, "eval_interval", None, lambda v: v is None or (is_int(v) and v >= 0),
                        "null or a non-negative integer")
    ckpt_interval = get(tr, T, "checkpoint_interval", None, lambda v: v is None or (is_int(v) and v >= 0),
                        "null or a non-negative integer")
    metric = get(tr, T, "metric", "macro_f1", lambda v: v in ALL_METRICS, " or ".join(ALL_METRICS))
    device = get(tr, T, "device", "auto", lambda v: isinstance(v, str) and v, "a device name such as auto, cpu, cuda")
    workers = get(tr, T, "num_workers", 0, lambda v: is_int(v) and v >= 0, "a non-negative integer")
    eval_bs = get(tr, T, "eval_batch_size", 64, lambda v: is_int(v) and v >= 1, "a positive integer")
    log_interval = get(tr, T, "log_interval", 10, lambda v: is_int(v) and v >= 1, "a positive integer")
    selection = get(tr, T, "selection", "train-languages", lambda v: v in SELECTIONS, " or ".join(SELECTIONS))

    if epochs is None and max_steps is None:
        problems.append(Problem(file, f"$.{H}.epochs", "set epochs or max_steps"))
    if micro is None:
        if batch % world_size:
            problems.append(Problem(file, f"$.{H}.batch_size",
                                    f"{batch} rows cannot be split evenly over {world_size} processes; "
                                    "set micro_batch_size or change batch_size"))
        micro = max(1, batch // world_size)
    elif batch % (micro * world_size):
        problems.append(Problem(file, f"$.{H}.micro_batch_size",
                                f"batch_size {batch} is not a multiple of micro_batch_size {micro} x "
                                f"{world_size} processes"))
    try:
        strategy = dist_env.resolve_strategy(strategy, world_size, file=file)
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems=problems)
    return Settings(
        learning_rate=float(lr), batch_size=batch, micro_batch_size=micro,
        accumulation=max(1, batch // (micro * world_size)), epochs=epochs, max_steps=max_steps,
        warmup_ratio=float(warmup), scheduler=scheduler, weight_decay=float(wd),
        gradient_clipping=float(clip) if clip else None, seed=seed, dropout=float(dropout), strategy=strategy,
        precision=precision, compile=compile_, eval_interval=eval_interval or None,
        checkpoint_interval=ckpt_interval or None, metric=metric, device=device, num_workers=workers,
        eval_batch_size=eval_bs, log_interval=log_interval, selection=selection,
    )


def lr_factor(step: int, total: int, warmup: int, scheduler: str) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    The formulas of transformers' ``get_{linear,cosine,constant}_schedule_with_warmup``, so runs
    compare with the old tool's.
    """
    if step < warmup:
        return step / max(1, warmup)
    if scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if scheduler == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


def total_steps(settings: Settings, steps_per_epoch: int) -> int:
    if settings.max_steps is not None:
        return settings.max_steps
    return max(1, math.ceil(float(settings.epochs or 0) * steps_per_epoch))
