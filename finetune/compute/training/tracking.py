"""Where training reports go: the tracker hook.

The loop calls every tracker on rank 0 only: ``start(step)`` once after setup (the step training
continues from; 0 for a fresh run), ``log_train`` at every log interval, ``log_eval`` after each
evaluation, ``finish(result)`` after result.json is written, and ``close(exit_code)`` when the
run ends in any way (finished 0, preempted 75, failed). :class:`MetricsFile` (the trial's
``metrics.jsonl``, one line per evaluated language) is always there; :func:`trackers_for` adds

* :class:`WandbTracker` when ``wandb.project`` is set (``wandb.mode`` online, offline or
  disabled): run name = trial id, group = the plan folder's name, config = the hyperparameters
  and languages; a requeued trial resumes the same run by its id;
* :class:`TensorBoardTracker` when ``tensorboard`` is true (``trials/<id>/tensorboard``) or a
  folder (``<folder>/<trial id>``).

Both get the same scalars (:func:`train_scalars`, :func:`eval_scalars`, :func:`result_scalars`):
``train/loss`` and ``train/lr`` per log interval, ``eval/<language>/<metric>`` per evaluation,
``test/<language>/<metric>`` at the end, all at the optimizer step. A resumed run never logs a
step twice: W&B skips every step up to the highest it logged before (``wandb/last_step.json``),
TensorBoard purges the events after the step it resumes from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from finetune import layout
from finetune.fileio import atomic_write_text


class Tracker(Protocol):
    def start(self, step: int) -> None: ...

    def log_train(self, step: int, values: dict[str, float]) -> None: ...

    def log_eval(self, step: int, rows: list[dict[str, Any]]) -> None: ...

    def finish(self, result: dict[str, Any]) -> None: ...

    def close(self, exit_code: int) -> None: ...


class MetricsFile:
    """``metrics.jsonl``: evaluation lines; a resumed run first drops the lines after its step."""

    def __init__(self, path: Path):
        self.path = path

    def start(self, step: int) -> None:
        _truncate_metrics(self.path, step)

    def log_train(self, step: int, values: dict[str, float]) -> None:
        pass  # the train loss is in each evaluation line (train_loss since the last evaluation)

    def log_eval(self, step: int, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, result: dict[str, Any]) -> None:
        pass

    def close(self, exit_code: int) -> None:
        pass


def trackers_for(config: dict[str, Any], trial_dir: Path) -> list[Tracker]:
    """The trackers of a trial: metrics.jsonl, plus W&B and TensorBoard when the config asks."""
    trackers: list[Tracker] = [MetricsFile(layout.metrics_file(trial_dir))]
    wandb = config.get("wandb") or {}
    if wandb.get("project") and wandb.get("mode", "online") != "disabled":
        trackers.append(WandbTracker(config, trial_dir))
    tensorboard = config.get("tensorboard")
    if tensorboard:
        trial_id = str(config.get("id") or trial_dir.name)
        folder = layout.tensorboard_dir(trial_dir) if tensorboard is True else Path(tensorboard) / trial_id
        trackers.append(TensorBoardTracker(folder))
    return trackers


# --- the scalars --------------------------------------------------------------------------------------

_NOT_METRICS = frozenset({"step", "epoch", "language", "split", "train_loss", "lr"})


def train_scalars(values: dict[str, float]) -> dict[str, float]:
    return {f"train/{k}": float(v) for k, v in values.items()}


def eval_scalars(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``<split>/<language>/<metric>`` for every numeric metric of every row, and the epoch."""
    out: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if key not in _NOT_METRICS and _is_number(value):
                out[f"{row.get('split', 'eval')}/{row['language']}/{key}"] = float(value)
        if _is_number(row.get("epoch")):
            out["train/epoch"] = float(row["epoch"])
    return out


def result_scalars(result: dict[str, Any]) -> dict[str, float]:
    """``test/<language>/<metric>`` of the final (best) model, from result.json."""
    return {f"test/{lang}/{key}": float(value)
            for lang, splits in (result.get("metrics") or {}).items()
            for key, value in (splits.get("test") or {}).items() if _is_number(value)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- Weights & Biases -----------------------------------------------------------------------------------


class WandbTracker:
    """One W&B run per trial, resumed by its id when the trial is requeued."""

    def __init__(self, config: dict[str, Any], trial_dir: Path):
        self.config, self.trial_dir = config, trial_dir
        self.trial_id = str(config.get("id") or trial_dir.name)
        self.run: Any = None
        self.floor = 0  # steps up to here were logged by an earlier run of this trial
        self.last = 0  # the highest step logged (also in wandb/last_step.json)
        self.step = 0

    def start(self, step: int) -> None:
        from finetune.errors import FinetuneError, Problem

        settings = self.config.get("wandb") or {}
        try:
            import wandb
        except ImportError:
            raise FinetuneError(problems=[Problem(str(layout.config_file(self.trial_dir)), "$.wandb.project",
                                                  "W&B logging needs the wandb package (pip install 'finetune[track]'), "
                                                  "or set wandb.mode to disabled")]) from None
        layout.wandb_dir(self.trial_dir).mkdir(parents=True, exist_ok=True)  # W&B writes into <dir>/wandb
        self.last = _read_step(layout.wandb_last_step_file(self.trial_dir))
        mode = settings.get("mode") or "online"
        try:
            self.run = wandb.init(
                project=settings["project"], entity=settings.get("entity") or None, mode=mode,
                id=run_id(self.config, self.trial_dir), resume="allow", name=self.trial_id,
                group=plan_name(self.config, self.trial_dir), dir=str(self.trial_dir),
                job_type=str(self.config.get("model_type") or "finetune"), config=run_config(self.config),
                settings=wandb.Settings(console="off", silent=True, save_code=False),
            )
        except Exception as e:  # not logged in, no network, ...: say what to do instead
            raise FinetuneError(problems=[Problem(str(layout.config_file(self.trial_dir)), "$.wandb.mode",
                                                  f"W&B run could not start in {mode} mode ({type(e).__name__}: {e}); "
                                                  "run `wandb login`, or set wandb.mode to offline "
                                                  "(`wandb sync` later) or disabled")]) from None
        # run.step is the next step of a resumed online run (0 offline): never log below it
        self.floor = max(step, self.last, int(getattr(self.run, "step", 0) or 0) - 1)
        self.step = step

    def _log(self, step: int, values: dict[str, float]) -> None:
        self.step = max(self.step, step)
        if step <= self.floor or not values:
            return
        self.run.log(values, step=step)
        if step > self.last:
            self.last = step
            atomic_write_text(layout.wandb_last_step_file(self.trial_dir), json.dumps({"step": step}) + "\n")

    def log_train(self, step: int, values: dict[str, float]) -> None:
        self._log(step, train_scalars(values))

    def log_eval(self, step: int, rows: list[dict[str, Any]]) -> None:
        self._log(step, eval_scalars(rows))

    def finish(self, result: dict[str, Any]) -> None:
        scalars = result_scalars(result)
        self._log(int(result.get("steps") or self.step), scalars)
        self.run.summary.update({**scalars, "best_step": result.get("best_step")})

    def close(self, exit_code: int) -> None:
        if self.run is None:
            return
        if exit_code == layout.EXIT_REQUEUE:
            self.run.mark_preempting()
        self.run.finish(exit_code=exit_code)
        self.run = None


def run_id(config: dict[str, Any], trial_dir: Path) -> str:
    """The W&B run id: the trial id and a hash of its plan folder (the same trial in two plans is
    two runs); stable across requeues, so the run resumes."""
    import hashlib

    plan = str(config.get("plan_dir") or trial_dir.resolve().parent.parent)
    return f"{config.get('id') or trial_dir.name}-{hashlib.sha256(plan.encode()).hexdigest()[:8]}"


def plan_name(config: dict[str, Any], trial_dir: Path) -> str:
    return Path(str(config.get("plan_dir") or trial_dir.resolve().parent.parent)).name


def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """What a W&B run records as its config: the trial's hyperparameters and languages."""
    return {"hyperparameters": config.get("hyperparameters") or {}, "task": config.get("task"),
            "model_type": config.get("model_type"), "train_languages": config.get("train_languages"),
            "eval_languages": config.get("eval_languages"), "grid_point": config.get("grid_point") or {},
            "trial": config.get("id")}


def _read_step(path: Path) -> int:
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# --- TensorBoard -----------------------------------------------------------------------------------------


class TensorBoardTracker:
    """Event files of the same scalars; a resumed run purges the events after its start step."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writer: Any = None
        self.step = 0

    def start(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder.mkdir(parents=True, exist_ok=True)
        # events at steps >= purge_step, written by an earlier run of this trial, are dropped
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=step + 1)
        self.step = step

    def _log(self, step: int, values: dict[str, float]) -> None:
        self.step = max(self.step, step)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def log_train(self, step: int, values: dict[str, float]) -> None:
        self._log(step, train_scalars(values))

    def log_eval(self, step: int, rows: list[dict[str, Any]]) -> None:
        self._log(step, eval_scalars(rows))

    def finish(self, result: dict[str, Any]) -> None:
        self._log(int(result.get("steps") or self.step), result_scalars(result))

    def close(self, exit_code: int) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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
