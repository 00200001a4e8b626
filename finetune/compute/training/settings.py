"""Settings: the frozen trial config's hyperparameters and training options as a typed object.

The trial config is validated against ``finetune/login/schemas/trial.schema.json`` (whose
hyperparameters and training sections are the config schema's) and then read as it is: the
trainer keeps no defaults and no rules of its own, so ``config/default.json`` is the only place a
default lives and the schema the only place a rule does. What only the trainer can check (the
batch split over this job's processes, the strategy for its world size) is checked here. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from finetune import layout
from finetune.compute import distributed as dist_env
from finetune.errors import ConfigError, Problem


@dataclass(frozen=True)
class Settings:
    # hyperparameters
    learning_rate: float
    batch_size: int  # global, in rows
    micro_batch_size: int  # per forward pass of one process (resolved: null = batch_size / world size)
    epochs: int
    max_steps: int | None  # wins over epochs when set
    warmup_ratio: float
    scheduler: str
    weight_decay: float
    gradient_clipping: float | None  # None: no clipping
    seed: int
    dropout: float
    # training
    strategy: str  # single | ddp | fsdp (resolved)
    precision: str  # auto | fp32 | bf16 | fp16 (resolved against the device in setup)
    compile: bool
    eval_interval: int | None  # None: only at the end
    checkpoint_interval: int | None  # None: only when preempted
    eval_batch_size: int
    log_interval: int
    dump_logits: bool
    logit_directory: str | None  # None: the trial's logits/
    metric: str
    device: str
    num_workers: int
    max_eval_samples: int | None
    selection: str  # which eval languages choose the best checkpoint: train-languages | each-language
    # derived
    accumulation: int  # micro batches per process per optimizer step

    @property
    def virtual_ranks(self) -> int:
        return self.batch_size // self.micro_batch_size


DERIVED = ("accumulation",)


def settings_from_config(config: dict[str, Any], world_size: int = 1, *, file: str = layout.CONFIG_FILE) -> Settings:
    """Validate the trial config (all problems at once, raised as ConfigError) and read it."""
    from finetune.login.schema import validate_trial

    # slurm is the scheduler's, checked by submit once SLURM's defaults are filled in; not read here
    problems = validate_trial({k: v for k, v in config.items() if k != "slurm"}, file)
    if problems:
        raise ConfigError(problems=problems)
    hp, tr = config["hyperparameters"], config["training"]
    H = "hyperparameters"
    batch, micro = hp["batch_size"], hp["micro_batch_size"]
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
    strategy = tr["strategy"]
    try:
        strategy = dist_env.resolve_strategy(strategy, world_size, file=file)
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems=problems)
    return Settings(
        learning_rate=float(hp["learning_rate"]), batch_size=batch, micro_batch_size=micro, epochs=hp["epochs"],
        max_steps=hp["max_steps"], warmup_ratio=float(hp["warmup_ratio"]), scheduler=hp["scheduler"],
        weight_decay=float(hp["weight_decay"]),
        gradient_clipping=float(hp["gradient_clipping"]) if hp["gradient_clipping"] else None,
        seed=hp["seed"], dropout=float(hp["dropout"]),
        strategy=strategy, precision=tr["precision"], compile=tr["compile"],
        eval_interval=tr["eval_interval"] or None, checkpoint_interval=tr["checkpoint_interval"] or None,
        eval_batch_size=tr["eval_batch_size"], log_interval=tr["log_interval"], dump_logits=tr["dump_logits"],
        logit_directory=tr["logit_directory"], metric=tr["metric"], device=tr["device"],
        num_workers=tr["num_workers"], max_eval_samples=tr["max_eval_samples"], selection=tr["selection"],
        accumulation=max(1, batch // (micro * world_size)),
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
    return max(1, settings.epochs * steps_per_epoch)
