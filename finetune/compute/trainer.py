"""The fine-tuning trainer: one trial, single process, DDP or FSDP2, with exact resume.

Reads top to bottom: settings (a pure function of the trial config), setup (model, data,
optimizer, resume), the train loop, evaluation, checkpoints, and the final result.

Data order: the global batch of ``batch_size`` rows is cut into ``V = batch_size / micro_batch_size``
micro batches; the length-grouped sampler deals global micro batch ``k`` to the virtual rank
``k % V`` and process ``r`` owns virtual ranks ``r*A .. r*A+A-1`` (``A`` accumulation steps). So
one process with accumulation and several processes see the same global batches, and the loss
is the mean over the rows of the global batch in both cases.

Resume: everything that decides the next step is in the checkpoint: model and optimizer state
(torch.distributed.checkpoint, so FSDP shards are saved and loaded without gathering), the step
(from which the epoch, the sampler position and the learning rate follow), RNG states per rank,
the grad scaler, the best metric so far. ``checkpoints/latest.json`` and ``best.json`` point at
the current folders and are replaced atomically, so a crash mid-save leaves the last good one.

Exit codes (finetune.layout): 0 finished, 1 failed (state.json says why), 2 bad input, 75 preempted (USR2).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.compute import distributed as dist_env
from finetune.compute.metrics import METRICS, classification_metrics, is_better
from finetune.errors import ConfigError, FinetuneError, Problem
from finetune.fileio import atomic_write_json, atomic_write_text, read_json
from finetune.layout import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_FINISHED, EXIT_REQUEUE, write_state

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# --- settings: trial config -> what to do (pure) --------------------------------------------------


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
    metric = get(tr, T, "metric", "macro_f1", lambda v: v in METRICS, " or ".join(METRICS))
    device = get(tr, T, "device", "auto", lambda v: isinstance(v, str) and v, "a device name such as auto, cpu, cuda")
    workers = get(tr, T, "num_workers", 0, lambda v: is_int(v) and v >= 0, "a non-negative integer")
    eval_bs = get(tr, T, "eval_batch_size", 64, lambda v: is_int(v) and v >= 1, "a positive integer")
    log_interval = get(tr, T, "log_interval", 10, lambda v: is_int(v) and v >= 1, "a positive integer")

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
        eval_batch_size=eval_bs, log_interval=log_interval,
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


# --- trial files ------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop evaluation lines after the resume step, so a rerun never duplicates them."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a torn last line of a killed run
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _append_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


class _Log:
    """Rank 0 talks: a tqdm bar on a terminal, plain flushed lines otherwise."""

    def __init__(self, active: bool, total: int, initial: int):
        self.active = active
        self.bar = None
        if active and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def line(self, message: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(f"[{_now()}] {message}", file=sys.stderr, flush=True)

    def step(self, message: str, *, plain: bool) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(message, refresh=False)
        elif plain:
            self.line(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Preemption:
    """SIGUSR2 sets a flag; the loop finishes its step, checkpoints and exits 75."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGUSR2, self._handler)
        except ValueError:  # not the main thread: no signals, checkpoint intervals still apply
            self._previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR2, self._previous)


class _Preempted(Exception):
    pass


# --- entry point ------------------------------------------------------------------------------------


def run(
    trial_dir: str | os.PathLike[str],
    *,
    dump_logits: bool | None = None,
    logit_directory: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Train one trial in ``trial_dir`` (reads config.json); 0 finished, 1 failed, 2 bad input, 75 preempted.

    ``dump_logits``/``logit_directory`` override the config's ``training.dump_logits`` /
    ``training.logit_directory``; ``threads`` sets torch's CPU threads (default: SLURM_CPUS_PER_TASK
    when set); ``on_step(step)`` is called on every rank after each optimizer step (tests use it to
    send the preemption signal at a chosen step).
    """
    trial_dir = Path(trial_dir)
    env = dist_env.from_environ()
    if layout.is_finished(trial_dir):
        if env.is_main:
            print(f"{trial_dir}: already finished ({layout.RESULT_FILE} says so); nothing to do", file=sys.stderr)
        return EXIT_FINISHED
    if not layout.config_file(trial_dir).is_file():
        print(f"error: {layout.config_file(trial_dir)}: no such file (not a trial directory?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    with _Preemption() as preemption:
        try:
            config = read_json(layout.config_file(trial_dir))
            if env.is_main:
                write_state(trial_dir, "running")
            trainer = _Trainer(trial_dir, config, env, preemption, dump_logits=dump_logits,
                               logit_directory=logit_directory, threads=threads, on_step=on_step)
            trainer.train()
            trainer.finish()
            return EXIT_FINISHED
        except _Preempted as e:
            if env.is_main:
                write_state(trial_dir, "preempted", reason=str(e))
            return EXIT_REQUEUE
        except FinetuneError as e:
            print(f"error: {e}", file=sys.stderr)
            if env.is_main:
                write_state(trial_dir, "failed", reason=str(e))
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            if env.is_main:
                write_state(trial_dir, "failed", reason="interrupted (SIGINT)")
            raise
        except Exception as e:
            traceback.print_exc()
            if env.is_main:
                write_state(trial_dir, "failed", reason=f"{type(e).__name__}: {e}")
            return EXIT_FAILED
        finally:
            dist_env.destroy_process_group()


# --- the trainer ------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What the checkpoint restores besides tensors (JSON)."""

    step: int = 0
    best_value: float | None = None
    best_step: int | None = None
    samples: int = 0  # global rows trained on, all segments
    tokens: int = 0  # global non-padding tokens trained on
    train_s: float = 0.0  # time in train steps, all segments
    wall_s: float = 0.0  # wall time of earlier segments
    loss_sum: float = 0.0  # train loss since the last evaluation (for the log line)
    loss_steps: int = 0


class _Rows:
    """Token ids and labels held as Python lists: no per-batch Arrow decoding in the loop."""

    def __init__(self, input_ids: list[list[int]], labels: list[int]):
        self.input_ids = input_ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


def _rows(dataset: Any, limit: int | None = None) -> _Rows:
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    return _Rows([list(x) for x in dataset["input_ids"]], [int(y) for y in dataset["labels"]])


class _Trainer:
    # --- setup ------------------------------------------------------------------------------------
    def __init__(self, trial_dir: Path, config: dict[str, Any], env: dist_env.DistEnv, preemption: _Preemption,
                 *, dump_logits: bool | None, logit_directory: Any, threads: int | None,
                 on_step: Callable[[int], None] | None):
        import torch

        self.t0 = time.perf_counter()
        self.trial_dir, self.config, self.env, self.preemption = trial_dir, config, env, preemption
        self.on_step = on_step
        self.config_file = str(layout.config_file(trial_dir))
        self.s = settings_from_config(config, env.world_size, file=self.config_file)
        training = config.get("training") or {}
        self.dump_logits = bool(training.get("dump_logits", True)) if dump_logits is None else dump_logits
        logdir = logit_directory if logit_directory is not None else training.get("logit_directory")
        self.logit_dir = Path(logdir) if logdir else layout.logits_dir(trial_dir)
        self.trial_id = str(config.get("id") or trial_dir.name)
        self.ckpt_dir = layout.checkpoints_dir(trial_dir)
        self.metrics_path = layout.metrics_file(trial_dir)

        threads = threads or _int_env("SLURM_CPUS_PER_TASK")
        if threads:
            torch.set_num_threads(threads)
        self.device = dist_env.pick_device(self.s.device, env)
        self.precision = self._resolve_precision()
        dist_env.init_process_group(env, self.device)
        _seed_everything(self.s.seed)

        self._build_model_and_data()
        self._build_optimizer()
        self.state = TrainState()
        self.saved_step: int | None = None  # step of the checkpoint on disk, never overwritten in place
        self._resume()

    def _resolve_precision(self) -> str:
        import torch

        p = self.s.precision
        if p == "auto":
            if self.device.type != "cuda":
                return "fp32"
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if p == "fp16" and self.device.type != "cuda":
            raise ConfigError(problems=[Problem(self.config_file, "$.training.precision",
                                                "fp16 needs a GPU; use fp32 (or bf16) on CPU")])
        return p

    def _build_model_and_data(self) -> None:
        from finetune.compute.batching import LengthGroupedBatchSampler
        from finetune.compute.data import prepare_trial_data
        from finetune.compute.hf import NanoGPTForSequenceClassification
        from finetune.compute.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(self.config["tokenizer"])
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                          else self.tokenizer.eos_token_id)
        # The block size (for the data) comes from the checkpoint; the model itself is built after
        # the data, right after seeding, so its new head's initialisation depends on the seed only.
        probe = NanoGPTForSequenceClassification.from_nanogpt(self.config["checkpoint"], 2, dropout=self.s.dropout)
        block_size = _block_size(probe.config)
        del probe
        cache_dir = (self.config.get("data") or {}).get("cache_dir")
        data = prepare_trial_data(self.config, self.tokenizer, block_size, cache_dir=cache_dir)
        self.label_names = list(data.label_names)
        _seed_everything(self.s.seed)
        model = NanoGPTForSequenceClassification.from_nanogpt(
            self.config["checkpoint"], len(self.label_names), dropout=self.s.dropout
        )
        model.config.pad_token_id = self.pad_id
        model.config.id2label = dict(enumerate(self.label_names))
        model.config.label2id = {name: i for i, name in enumerate(self.label_names)}
        self.base = model.to(self.device)
        if self.env.distributed:
            # same initial weights everywhere (FSDP needs it), then each rank its own dropout masks
            import torch

            torch.manual_seed(self.s.seed + 1_000_003 * self.env.rank)
        self.model = dist_env.wrap(self.base, self.s.strategy, self.device)
        if self.s.compile:
            self.model.compile()

        self.train_rows = _rows(data.train) if data.train is not None else _Rows([], [])
        lengths = [len(x) for x in self.train_rows.input_ids]
        if not lengths:
            raise ConfigError(problems=[Problem(self.config_file, "$.train_languages", "no training rows")])
        A, V = self.s.accumulation, self.s.virtual_ranks
        self.samplers = [
            LengthGroupedBatchSampler(lengths, self.s.micro_batch_size, seed=self.s.seed, shuffle=True,
                                      rank=self.env.rank * A + a, world_size=V)
            for a in range(A)
        ]
        self.lengths = lengths
        self.steps_per_epoch = len(self.samplers[0].batches(0))
        self.total_steps = total_steps(self.s, self.steps_per_epoch)
        self.warmup_steps = math.ceil(self.s.warmup_ratio * self.total_steps)
        cap = (self.config.get("training") or {}).get("max_eval_samples")
        self.eval_sets = {lang: _rows(ds, cap) for lang, ds in data.eval.items()}
        self.test_sets = {lang: _rows(ds) for lang, ds in data.test.items()}
        self.pin = self.device.type == "cuda"

    def _build_optimizer(self) -> None:
        import torch

        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.s.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # fused kernels on CPU and GPU; FSDP's DTensors take the foreach path
        fused = self.s.strategy != "fsdp"
        self.optimizer = torch.optim.AdamW(groups, lr=self.s.learning_rate, fused=fused or None,
                                           foreach=None if fused else True)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def _autocast(self) -> Any:
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # --- train loop ---------------------------------------------------------------------------------
    def train(self) -> None:
        import torch
        import torch.nn.functional as F

        s, state, env = self.s, self.state, self.env
        log = _Log(env.is_main, self.total_steps, state.step)
        log.line(f"trial {self.trial_id}: {s.strategy} on {env.world_size} x {self.device}, {self.precision}, "
                 f"{len(self.train_rows)} train rows, {self.total_steps} steps of {s.batch_size} rows "
                 f"({s.accumulation} x {s.micro_batch_size} per process), from step {state.step}")
        self._check_preemption()
        # float64: the logged train loss is then the same whether or not the run was resumed
        acc_dtype = torch.float64 if self.device.type in ("cpu", "cuda") else torch.float32
        self.loss_acc = torch.zeros((), dtype=acc_dtype, device=self.device)
        V = s.virtual_ranks
        self.model.train()
        try:
            while state.step < self.total_steps:
                epoch, in_epoch = divmod(state.step, self.steps_per_epoch)
                t_mark = time.perf_counter()  # train time includes fetching and collating batches
                global_batches = self.samplers[0].global_batches(epoch)
                loaders = [self._loader(sampler, epoch, in_epoch) for sampler in self.samplers]
                for micro_batches in zip(*loaders, strict=True):
                    if state.step >= self.total_steps:
                        break
                    step_rows = [i for b in global_batches[in_epoch * V:(in_epoch + 1) * V] for i in b]
                    # sum over this process's rows / all rows of the step; DDP and FSDP average the
                    # gradients over processes, hence the world size
                    scale = env.world_size / len(step_rows)
                    step_loss = torch.zeros((), dtype=acc_dtype, device=self.device)
                    for a, batch in enumerate(micro_batches):
                        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                        with self._no_sync(a == len(micro_batches) - 1), self._autocast():
                            logits = self.model(input_ids=batch["input_ids"],
                                                attention_mask=batch["attention_mask"]).logits
                        loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum") * scale
                        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                        step_loss += loss.detach()
                    self._optimizer_step()
                    self.loss_acc += step_loss / env.world_size  # summed over ranks at evaluation
                    state.step += 1
                    in_epoch += 1
                    state.loss_steps += 1
                    state.samples += len(step_rows)
                    state.tokens += sum(self.lengths[i] for i in step_rows)
                    state.train_s += time.perf_counter() - t_mark
                    if self.on_step is not None:
                        self.on_step(state.step)
                    plain = state.step % s.log_interval == 0 or state.step == 1
                    if plain or log.bar is not None:
                        log.step(f"step {state.step}/{self.total_steps} loss {float(step_loss):.4f} "
                                 f"lr {self.optimizer.param_groups[0]['lr']:.3g}", plain=plain)
                    if (s.eval_interval and state.step % s.eval_interval == 0) or state.step == self.total_steps:
                        self._evaluate_and_keep_best(log)
                        self.model.train()
                    if s.checkpoint_interval and state.step % s.checkpoint_interval == 0 \
                            and state.step < self.total_steps:
                        self._save_latest()
                    self._check_preemption()
                    t_mark = time.perf_counter()  # evaluation and checkpoints are not train time
        finally:
            log.close()

    def _flush_loss(self) -> None:
        """Move the running train loss (summed over ranks) into the JSON state: one sync."""
        if self.env.distributed:
            import torch.distributed as dist

            dist.all_reduce(self.loss_acc)
        self.state.loss_sum += float(self.loss_acc)
        self.loss_acc.zero_()

    def _loader(self, sampler: Any, epoch: int, skip: int) -> Any:
        from functools import partial

        import torch
        from torch.utils.data import DataLoader

        from finetune.compute.batching import collate

        sampler.set_epoch(epoch)
        sampler.skip(skip)
        # Its own generator: a DataLoader otherwise draws its worker seed from the global RNG each
        # time an iterator starts, and a resumed run starts one at a different step (inexact resume).
        generator = torch.Generator().manual_seed(self.s.seed * 1000003 + epoch)
        return DataLoader(self.train_rows, batch_sampler=sampler, collate_fn=partial(collate, pad_id=self.pad_id),
                          num_workers=self.s.num_workers, pin_memory=self.pin, generator=generator)

    def _no_sync(self, last: bool) -> Any:
        """Skip the gradient all-reduce on all but the last micro batch of a step."""
        if self.s.strategy == "ddp" and not last:
            return self.model.no_sync()
        if self.s.strategy == "fsdp":
            self.model.set_requires_gradient_sync(last)
        return nullcontext()

    def _optimizer_step(self) -> None:
        import torch

        factor = lr_factor(self.state.step, self.total_steps, self.warmup_steps, self.s.scheduler)
        for group in self.optimizer.param_groups:
            group["lr"] = self.s.learning_rate * factor
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.s.gradient_clipping:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.gradient_clipping)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _check_preemption(self) -> None:
        if dist_env.all_max(int(self.preemption.requested), self.env):
            if self.state.step > 0 and self.state.step != self.saved_step:
                self._save_latest()
            raise _Preempted(f"SIGUSR2: checkpointed at step {self.state.step}")

    # --- evaluate -----------------------------------------------------------------------------------
    def predict(self, rows: _Rows) -> tuple[Any, Any]:
        """Logits ``(n, classes)`` in row order and labels; every rank runs every batch (FSDP needs it)."""
        import numpy as np
        import torch

        from finetune.compute.batching import LengthGroupedBatchSampler, collate

        model = dist_env.unwrap(self.model) if self.s.strategy == "ddp" else self.model
        model.eval()
        out = np.zeros((len(rows), len(self.label_names)), dtype=np.float32)
        order = LengthGroupedBatchSampler([len(x) for x in rows.input_ids], self.s.eval_batch_size, shuffle=False)
        with torch.inference_mode():
            for idx in order.batches():
                batch = collate([rows[i] for i in idx], self.pad_id)
                with self._autocast():
                    logits = model(input_ids=batch["input_ids"].to(self.device),
                                   attention_mask=batch["attention_mask"].to(self.device)).logits
                out[idx] = logits.float().cpu().numpy()
        return out, np.asarray(rows.labels, dtype=np.int64)

    def score(self, sets: dict[str, _Rows], split: str) -> dict[str, tuple[dict[str, float], Any, Any]]:
        return {lang: (classification_metrics(logits, labels), logits, labels)
                for lang, rows in sets.items() for logits, labels in [self.predict(rows)]}

    def _evaluate_and_keep_best(self, log: _Log) -> None:
        state = self.state
        scored = self.score(self.eval_sets, "eval")
        epoch = round(state.step / self.steps_per_epoch, 4)
        self._flush_loss()
        train_loss = state.loss_sum / max(1, state.loss_steps)
        rows = [{"step": state.step, "epoch": epoch, "language": lang, "split": "eval", **m,
                 "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"]}
                for lang, (m, _, _) in scored.items()]
        value = sum(m[self.s.metric] for m, _, _ in scored.values()) / max(1, len(scored))
        state.loss_sum, state.loss_steps = 0.0, 0
        if self.env.is_main:
            _append_metrics(self.metrics_path, rows)
        summary = ", ".join(f"{lang} {m[self.s.metric]:.4f}" for lang, (m, _, _) in scored.items())
        log.line(f"eval step {state.step} (epoch {epoch}): {self.s.metric} {summary}; train loss {train_loss:.4f}")
        if is_better(self.s.metric, value, state.best_value):
            state.best_value, state.best_step = value, state.step
            self._save_best()

    # --- checkpoint ---------------------------------------------------------------------------------
    def _dcp_save(self, state_dict: dict[str, Any], folder: Path) -> None:
        import warnings

        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.save(state_dict, checkpoint_id=str(folder))

    def _dcp_load(self, state_dict: dict[str, Any], folder: Path) -> None:
        import warnings

        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state_dict, checkpoint_id=str(folder))

    def _fresh_folder(self, name: str) -> Path:
        folder = self.ckpt_dir / name
        if self.env.is_main:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        dist_env.barrier(self.env)
        return folder

    def _publish(self, pointer: str, folder: Path, info: dict[str, Any], prefix: str) -> None:
        """All ranks saved: point at the new folder atomically, then drop the older ones."""
        dist_env.barrier(self.env)
        if self.env.is_main:
            atomic_write_json(self.ckpt_dir / pointer, {**info, "dir": folder.name})
            for old in self.ckpt_dir.glob(f"{prefix}-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        dist_env.barrier(self.env)

    def _save_latest(self) -> None:
        import torch
        from torch.distributed.checkpoint.state_dict import get_state_dict

        state = self.state
        self._flush_loss()
        folder = self._fresh_folder(f"step-{state.step:08d}")
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        self._dcp_save({"model": model_sd, "optim": optim_sd}, folder)
        snapshot = TrainState(**{**asdict(state), "wall_s": state.wall_s + time.perf_counter() - self.t0})
        torch.save({"rng": _rng_state(), "scaler": self.scaler.state_dict() if self.scaler else None},
                   folder / f"rank{self.env.rank}.pt")
        if self.env.is_main:
            atomic_write_json(folder / "trainer.json", {"state": asdict(snapshot), "world_size": self.env.world_size,
                                                         "settings": asdict(self.s)})
        self._publish("latest.json", folder, {"step": state.step}, "step")
        self.saved_step = state.step

    def _save_best(self) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        folder = self._fresh_folder(f"best-{self.state.step:08d}")
        self._dcp_save({"model": get_model_state_dict(self.model)}, folder)
        self._publish("best.json", folder,
                      {"step": self.state.step, "metric": self.s.metric, "value": self.state.best_value}, "best")

    def _resume(self) -> None:
        import torch
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        pointer = self.ckpt_dir / "latest.json"
        if not pointer.exists():
            if self.env.is_main:
                _truncate_metrics(self.metrics_path, 0)
            return
        folder = self.ckpt_dir / read_json(pointer)["dir"]
        saved = read_json(folder / "trainer.json")
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        sd = {"model": model_sd, "optim": optim_sd}
        self._dcp_load(sd, folder)
        set_state_dict(self.model, self.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        self.state = TrainState(**saved["state"])
        self.saved_step = self.state.step
        rank_file = folder / f"rank{self.env.rank}.pt"
        if saved.get("world_size") == self.env.world_size and rank_file.exists():
            extra = torch.load(rank_file, weights_only=True)
            _set_rng_state(extra["rng"])
            if self.scaler is not None and extra.get("scaler"):
                self.scaler.load_state_dict(extra["scaler"])
        if self.env.is_main:
            _truncate_metrics(self.metrics_path, self.state.step)
            print(f"resumed from {folder} at step {self.state.step}", file=sys.stderr, flush=True)

    # --- result -------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Score the best model on eval and test, save it, write result.json, drop the checkpoints."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        state = self.state
        best = self.ckpt_dir / "best.json"
        if best.exists():
            sd = {"model": get_model_state_dict(self.model)}
            self._dcp_load(sd, self.ckpt_dir / read_json(best)["dir"])
            set_model_state_dict(self.model, sd["model"])
        metrics: dict[str, dict[str, Any]] = {}
        for split, sets in (("eval", self.eval_sets), ("test", self.test_sets)):
            for lang, (m, logits, labels) in self.score(sets, split).items():
                metrics.setdefault(lang, {})[split] = m
                if self.dump_logits and self.env.is_main:
                    self._dump(lang, split, logits, labels)
        self._save_model()
        train_s = max(state.train_s, 1e-9)
        result = {
            "state": "finished", "trial": self.trial_id, "model_type": self.config.get("model_type"),
            "train_languages": self.config.get("train_languages"), "eval_languages": self.config.get("eval_languages"),
            "hyperparameters": self.config.get("hyperparameters"), "metrics": metrics,
            "best_step": state.best_step if state.best_step is not None else state.step,
            "timing": {"samples_per_s": state.samples / train_s, "tokens_per_s": state.tokens / train_s,
                       "wall_s": state.wall_s + time.perf_counter() - self.t0,
                       "peak_memory_mb": _peak_memory_mb(self.device)},
            "steps": state.step, "world_size": self.env.world_size, "strategy": self.s.strategy,
            "precision": self.precision, "device": str(self.device.type), "restart_count": layout.restart_count(),
        }
        if self.env.is_main:
            atomic_write_json(layout.result_file(self.trial_dir), result)
            write_state(self.trial_dir, "finished")
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        dist_env.barrier(self.env)

    def _dump(self, language: str, split: str, logits: Any, labels: Any) -> None:
        import io

        import numpy as np

        from finetune.fileio import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, logits=logits, labels=labels, trial=np.array(self.trial_id), language=np.array(language),
                 split=np.array(split), label_names=np.array(self.label_names))
        atomic_write_bytes(self.logit_dir / layout.logits_name(self.trial_id, language, split), buf.getvalue())

    def _save_model(self) -> None:
        """save_pretrained (safetensors) with the tokenizer, into model/ via a temporary folder."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.s.strategy == "fsdp":
            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.env.is_main:
                model = type(self.base)(self.base.config)
                model.load_state_dict(full)
        else:
            model = self.base
        if self.env.is_main:
            out = layout.model_dir(self.trial_dir)
            tmp = self.trial_dir / ".model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            if bars and not sys.stderr.isatty():
                hf_logging.disable_progress_bar()  # no "Writing model shards" bar in log files
            try:
                model.save_pretrained(tmp)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        dist_env.barrier(self.env)


# --- small helpers ----------------------------------------------------------------------------------


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def _block_size(config: Any) -> int:
    for name in ("block_size", "n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise ConfigError(problems=[Problem("checkpoint", "", "model config has no block size")])


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _peak_memory_mb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


if __name__ == "__main__":  # python -m finetune.compute.trainer TRIAL_DIR (e.g. under torchrun)
    if len(sys.argv) != 2:
        print("usage: python -m finetune.compute.trainer TRIAL_DIR", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(run(sys.argv[1]))
