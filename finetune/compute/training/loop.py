"""The training loop of one trial: setup, train (one method per optimizer step), evaluate,
checkpoint, result.

Data order: the global batch of ``batch_size`` rows is cut into ``V = batch_size / micro_batch_size``
micro batches; the length-grouped sampler deals global micro batch ``k`` to the virtual rank
``k % V`` and process ``r`` owns virtual ranks ``r*A .. r*A+A-1`` (``A`` accumulation steps). So
one process with accumulation and several processes see the same global batches, and the loss
is the mean over the rows of the global batch in both cases.

What is task-specific (data, model head, batch -> loss, predictions -> metrics) is in the task
object (``task.py``); checkpoints go through the :class:`CheckpointStore`; reports go to the
trackers (``tracking.py``).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.compute import distributed as dist_env
from finetune.compute.metrics import is_better
from finetune.compute.pruning import Pruned, Reporter
from finetune.compute.training import runtime
from finetune.compute.training.checkpoint import CheckpointStore, TrainState
from finetune.compute.training.runtime import Log, Preempted, Preemption
from finetune.compute.training.settings import lr_factor, settings_from_config, total_steps
from finetune.compute.training.task import Rows
from finetune.compute.training.tasks import task_for
from finetune.compute.training.tracking import trackers_for
from finetune.errors import ConfigError, Problem
from finetune.fileio import atomic_write_json


class Trainer:
    """One trial on this process (one rank of the job); :func:`finetune.compute.trainer.run` drives it."""

    # --- setup ------------------------------------------------------------------------------------
    def __init__(self, trial_dir: Path, config: dict[str, Any], env: dist_env.DistEnv, preemption: Preemption,
                 *, dump_logits: bool | None, logit_directory: Any, threads: int | None,
                 on_step: Callable[[int], None] | None):
        import torch

        self.t0 = time.perf_counter()
        self.trial_dir, self.config, self.env, self.preemption = trial_dir, config, env, preemption
        self.on_step = on_step
        self.config_file = str(layout.config_file(trial_dir))
        self.s = settings_from_config(config, env.world_size, file=self.config_file)
        self.dump_logits = self.s.dump_logits if dump_logits is None else dump_logits
        logdir = logit_directory if logit_directory is not None else self.s.logit_directory
        self.logit_dir = Path(logdir) if logdir else layout.logits_dir(trial_dir)
        self.trial_id = str(config["id"])
        from finetune.compute.training.lora import lora_settings

        self.lora = lora_settings(config, file=self.config_file)
        self.checkpoints = CheckpointStore(layout.checkpoints_dir(trial_dir), env, trainable_only=self.lora is not None)
        self.trackers = trackers_for(config, trial_dir) if env.is_main else []
        # A search's trial reports each evaluation (rank 0 asks the study; every rank hears the answer).
        self.searching = Reporter.from_config(config) is not None
        self.reporter = Reporter.from_config(config) if env.is_main else None

        threads = threads or runtime.int_env("SLURM_CPUS_PER_TASK")
        if threads:
            torch.set_num_threads(threads)
        self.device = dist_env.pick_device(self.s.device, env)
        self.precision = self._resolve_precision()
        if self.lora is not None and self.lora.four_bit:
            from finetune.compute.training.lora import check_qlora

            check_qlora(device=self.device, strategy=self.s.strategy, file=self.config_file)
        dist_env.init_process_group(env, self.device)
        runtime.seed_everything(self.s.seed)

        self._build_model_and_data()
        from finetune.compute.training.lora import parameter_counts

        self.parameters = parameter_counts(self.base)  # before FSDP shards them
        self._build_optimizer()
        self.state = TrainState()
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
        from finetune.compute.model import load_checkpoint

        self.task = task_for(self.config, self.s, file=self.config_file)
        # The block size (for the data) comes from the checkpoint; the model itself is built after
        # the data, right after seeding, so its new head's initialisation depends on the seed only.
        from finetune.compute import shared

        path = self.config["checkpoint"]
        loaded = shared.cached("checkpoint", shared.checkpoint_key(path), lambda: load_checkpoint(path))
        data = self.task.load_data(loaded[0].block_size)
        runtime.seed_everything(self.s.seed)
        self.base = self.task.build_model(loaded)
        four_bit = self.lora is not None and self.lora.four_bit
        if four_bit:  # QLoRA: the frozen base in 4-bit, on the device already
            import torch

            from finetune.compute.training.lora import load_4bit

            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
            self.base = load_4bit(self.base, device=self.device, compute_dtype=dtype,
                                  skip_modules=self.task.head_modules)
        if self.lora is not None:
            from finetune.compute.training.lora import add_adapters

            self.base = add_adapters(self.base, self.lora, self.task.head_modules)
        if not four_bit:
            self.base = self.base.to(self.device)
        del loaded
        if self.env.distributed:
            # same initial weights everywhere (FSDP needs it), then each rank its own dropout masks
            import torch

            torch.manual_seed(self.s.seed + 1_000_003 * self.env.rank)
        self.model = dist_env.wrap(self.base, self.s.strategy, self.device)
        if self.s.compile:
            self.model.compile()

        self.train_rows, self.eval_sets, self.test_sets = data.train, data.eval, data.test
        self.lengths = data.train.lengths()
        A, V = self.s.accumulation, self.s.virtual_ranks
        self.samplers = [
            LengthGroupedBatchSampler(self.lengths, self.s.micro_batch_size, seed=self.s.seed, shuffle=True,
                                      rank=self.env.rank * A + a, world_size=V)
            for a in range(A)
        ]
        self.steps_per_epoch = len(self.samplers[0].batches(0))
        self.total_steps = total_steps(self.s, self.steps_per_epoch)
        self.warmup_steps = math.ceil(self.s.warmup_ratio * self.total_steps)
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

    def _resume(self) -> None:
        restored = self.checkpoints.load_latest(self.model, self.optimizer, scaler=self.scaler)
        if restored is not None:
            self.state, folder = restored
            if self.env.is_main:
                print(f"resumed from {folder} at step {self.state.step}", file=sys.stderr, flush=True)
        for tracker in self.trackers:
            tracker.start(self.state.step)

    def _autocast(self) -> Any:
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # --- train loop ---------------------------------------------------------------------------------
    def train(self) -> None:
        import torch

        s, state, env = self.s, self.state, self.env
        log = Log(env.is_main, self.total_steps, state.step)
        log.line(f"trial {self.trial_id}: {s.strategy} on {env.world_size} x {self.device}, {self.precision}, "
                 f"{len(self.train_rows)} train rows, {self.total_steps} steps of {s.batch_size} rows "
                 f"({s.accumulation} x {s.micro_batch_size} per process), from step {state.step}")
        self._check_preemption()
        # float64: the logged train loss is then the same whether or not the run was resumed
        self.acc_dtype = torch.float64 if self.device.type in ("cpu", "cuda") else torch.float32
        self.loss_acc = torch.zeros((), dtype=self.acc_dtype, device=self.device)
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
                    step_loss = self.train_step(micro_batches, len(step_rows))
                    in_epoch += 1
                    state.samples += len(step_rows)
                    state.tokens += sum(self.lengths[i] for i in step_rows)
                    state.train_s += time.perf_counter() - t_mark
                    self._after_step(step_loss, log)
                    t_mark = time.perf_counter()  # evaluation and checkpoints are not train time
        finally:
            log.close()

    def train_step(self, micro_batches: tuple[dict[str, Any], ...], global_rows: int) -> Any:
        """One optimizer step over this process's micro batches; returns its (local) loss.

        Each micro batch's summed loss is divided by the rows of the whole global batch and
        multiplied by the world size, because DDP and FSDP average the gradients over processes.
        """
        import torch

        scale = self.env.world_size / global_rows
        step_loss = torch.zeros((), dtype=self.acc_dtype, device=self.device)
        for a, batch in enumerate(micro_batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self._no_sync(a == len(micro_batches) - 1), self._autocast():
                output = self.task.forward(self.model, batch)
            loss = self.task.loss(output, batch) * scale
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            step_loss += loss.detach()
        self._optimizer_step()
        self.loss_acc += step_loss / self.env.world_size  # summed over ranks at evaluation
        self.state.step += 1
        self.state.loss_steps += 1
        return step_loss

    def _after_step(self, step_loss: Any, log: Log) -> None:
        """Log, evaluate, checkpoint and honour a preemption request, as the step number says."""
        s, state = self.s, self.state
        if self.on_step is not None:
            self.on_step(state.step)
        plain = state.step % s.log_interval == 0 or state.step == 1
        if plain or log.bar is not None:
            loss, lr = float(step_loss), self.optimizer.param_groups[0]["lr"]
            log.step(f"step {state.step}/{self.total_steps} loss {loss:.4f} lr {lr:.3g}", plain=plain)
            if plain:
                for tracker in self.trackers:
                    tracker.log_train(state.step, {"loss": loss, "lr": lr})
        if (s.eval_interval and state.step % s.eval_interval == 0) or state.step == self.total_steps:
            self.evaluate(log)
            self.model.train()
        if s.checkpoint_interval and state.step % s.checkpoint_interval == 0 and state.step < self.total_steps:
            self.save_checkpoint()
        self._check_preemption()

    def _loader(self, sampler: Any, epoch: int, skip: int) -> Any:
        import torch
        from torch.utils.data import DataLoader

        sampler.set_epoch(epoch)
        sampler.skip(skip)
        # Its own generator: a DataLoader otherwise draws its worker seed from the global RNG each
        # time an iterator starts, and a resumed run starts one at a different step (inexact resume).
        generator = torch.Generator().manual_seed(self.s.seed * 1000003 + epoch)
        return DataLoader(self.train_rows, batch_sampler=sampler, collate_fn=self.task.collate_fn(),
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

    def _flush_loss(self) -> None:
        """Move the running train loss (summed over ranks) into the JSON state: one sync."""
        if self.env.distributed:
            import torch.distributed as dist

            dist.all_reduce(self.loss_acc)
        self.state.loss_sum += float(self.loss_acc)
        self.loss_acc.zero_()

    def _check_preemption(self) -> None:
        if dist_env.all_max(int(self.preemption.requested), self.env):
            if self.state.step > 0 and self.state.step != self.checkpoints.saved_step:
                self.save_checkpoint()
            raise Preempted(f"SIGUSR2: checkpointed at step {self.state.step}")

    # --- evaluate -----------------------------------------------------------------------------------
    def score(self, sets: dict[str, Rows]) -> dict[str, tuple[dict[str, float], Any, Any]]:
        """language -> (metrics, predictions, labels) of the current model.

        Sharded: each rank predicts its share of the batches; the gathered logits (and so the
        metrics) are exactly one process's."""
        model = dist_env.unwrap(self.model) if self.s.strategy == "ddp" else self.model
        model.eval()
        scored = {}
        for lang, rows in sets.items():
            predictions, labels = self.task.predict(model, rows, device=self.device, autocast=self._autocast,
                                                    env=self.env, lockstep=self.s.strategy == "fsdp")
            scored[lang] = (self.task.metrics(predictions, labels), predictions, labels)
        return scored

    def evaluate(self, log: Log) -> None:
        """Score the eval languages, report, and keep the model if it is the best so far."""
        state = self.state
        scored = self.score(self.eval_sets)
        epoch = round(state.step / self.steps_per_epoch, 4)
        self._flush_loss()
        train_loss = state.loss_sum / max(1, state.loss_steps)
        rows = [{"step": state.step, "epoch": epoch, "language": lang, "split": "eval", **m,
                 "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"]}
                for lang, (m, _, _) in scored.items()]
        chosen = self.selection_languages()
        value = sum(scored[lang][0][self.s.metric] for lang in chosen) / max(1, len(chosen))
        state.loss_sum, state.loss_steps = 0.0, 0
        for tracker in self.trackers:
            tracker.log_eval(state.step, rows)
        summary = ", ".join(f"{lang} {m[self.s.metric]:.4f}" for lang, (m, _, _) in scored.items())
        log.line(f"eval step {state.step} (epoch {epoch}): {self.s.metric} {summary}; train loss {train_loss:.4f}")
        if self.s.selection == "each-language":
            self._keep_each_language_best(scored)
        if is_better(self.s.metric, value, state.best_value):
            state.best_value, state.best_step = value, state.step
            self.checkpoints.save_best(self.model, step=state.step, metric=self.s.metric, value=value)
        if self.searching:  # the search's pruner may stop the trial here (not at its last step)
            stop = self.reporter.report(state.step, rows) if self.reporter is not None else False
            if dist_env.all_max(int(stop), self.env) and state.step < self.total_steps:
                log.line(f"pruned at step {state.step}")
                raise Pruned(state.step, rows)

    def selection_languages(self) -> list[str]:
        """The eval languages whose mean chooses the best checkpoint (the saved model).

        train-languages: the training languages that are evaluated (zero-shot for every other
        target); when none is, all eval languages (result.json says which). each-language: the
        saved model is chosen on all eval languages, each language's reported metrics on its own.
        """
        if self.s.selection == "train-languages":
            own = [lang for lang in self.config.get("train_languages") or [] if lang in self.eval_sets]
            if own:
                return own
        return list(self.eval_sets)

    def _keep_each_language_best(self, scored: dict[str, tuple[dict[str, float], Any, Any]]) -> None:
        """The oracle protocol: a language whose own eval split improved gets its test split scored
        now, and its predictions kept, so no checkpoint per language is needed."""
        for lang, (m, predictions, labels) in scored.items():
            best = self.state.oracle.get(lang)
            if not is_better(self.s.metric, m[self.s.metric], best["value"] if best else None):
                continue
            test: dict[str, float] = {}
            if lang in self.test_sets:
                test, test_predictions, test_labels = self.score({lang: self.test_sets[lang]})[lang]
                if self.dump_logits and self.env.is_main:
                    self.task.dump(self.logit_dir, self.trial_id, lang, "test", test_predictions, test_labels)
            if self.dump_logits and self.env.is_main:
                self.task.dump(self.logit_dir, self.trial_id, lang, "eval", predictions, labels)
            self.state.oracle[lang] = {"value": m[self.s.metric], "step": self.state.step, "eval": m, "test": test}

    # --- checkpoint ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """The latest resume state: model, optimizer, TrainState, RNG and scaler."""
        state = self.state
        self._flush_loss()
        snapshot = TrainState(**{**asdict(state), "wall_s": state.wall_s + time.perf_counter() - self.t0})
        self.checkpoints.save_latest(self.model, self.optimizer, snapshot, scaler=self.scaler,
                                     settings=asdict(self.s))

    # --- result -------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Score the best model on eval and test, save it, write result.json, drop the checkpoints."""
        state = self.state
        self.checkpoints.load_best(self.model)
        metrics: dict[str, dict[str, Any]] = {}
        oracle = self.s.selection == "each-language"
        for split, sets in (("eval", self.eval_sets), ("test", self.test_sets)):
            for lang, (m, predictions, labels) in self.score(sets).items():
                if oracle and lang in state.oracle:
                    continue  # scored (and kept) at the language's own best step
                metrics.setdefault(lang, {})[split] = m
                if self.dump_logits and self.env.is_main:
                    self.task.dump(self.logit_dir, self.trial_id, lang, split, predictions, labels)
        best_steps = {}
        if oracle:
            for lang, rec in state.oracle.items():
                metrics.setdefault(lang, {})["eval"] = rec["eval"]
                if rec["test"]:
                    metrics[lang]["test"] = rec["test"]
                best_steps[lang] = rec["step"]
        self._save_model()
        train_s = max(state.train_s, 1e-9)
        result = {
            "state": "finished", "trial": self.trial_id, "model_type": self.config["model_type"],
            "train_languages": self.config["train_languages"], "eval_languages": self.config["eval_languages"],
            "hyperparameters": self.config["hyperparameters"], "metrics": metrics,
            "best_step": state.best_step if state.best_step is not None else state.step,
            "selection": {"protocol": self.s.selection, "checkpoint_languages": self.selection_languages(),
                          **({"best_steps": best_steps} if oracle else {})},
            "timing": {"samples_per_s": state.samples / train_s, "tokens_per_s": state.tokens / train_s,
                       "wall_s": state.wall_s + time.perf_counter() - self.t0,
                       "peak_memory_mb": runtime.peak_memory_mb(self.device)},
            "steps": state.step, "world_size": self.env.world_size, "strategy": self.s.strategy,
            "precision": self.precision, "device": str(self.device.type), "restart_count": layout.restart_count(),
            "parameters": self.parameters,
        }
        if self.env.is_main:
            atomic_write_json(layout.result_file(self.trial_dir), result)
            layout.write_state(self.trial_dir, "finished")
            self.checkpoints.remove()
            for tracker in self.trackers:
                tracker.finish(result)
        dist_env.barrier(self.env)

    def close(self, exit_code: int) -> None:
        """Let every tracker end its run (finished 0, preempted 75, failed); never masks the outcome."""
        for tracker in self.trackers:
            try:
                tracker.close(exit_code)
            except Exception as e:  # a tracker that cannot close must not turn a result into a failure
                print(f"warning: {type(tracker).__name__} did not close: {type(e).__name__}: {e}", file=sys.stderr)

    def _save_model(self) -> None:
        """save_pretrained (safetensors) with the tokenizer, into model/ via a temporary folder."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.s.strategy == "fsdp":
            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.env.is_main:
                from finetune.compute.model import load_checkpoint

                model = self.task.build_model(load_checkpoint(self.config["checkpoint"]))
                if self.lora is not None:
                    from finetune.compute.training.lora import add_adapters

                    model = add_adapters(model, self.lora, self.task.head_modules)
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
                if self.lora is not None:
                    from finetune.compute.training.lora import save_adapter

                    save_adapter(model, tmp)
                else:
                    model.save_pretrained(tmp)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            self.task.tokenizer.save_pretrained(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        dist_env.barrier(self.env)
