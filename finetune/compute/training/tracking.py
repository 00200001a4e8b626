"""Where training reports go: the tracker hook.

The loop calls every tracker on rank 0 only: ``start(step)`` once after setup (the step training
continues from; 0 for a fresh run), ``log_train`` at every log interval, ``log_eval`` after each
evaluation, ``finish(result)`` after result.json is written. :class:`MetricsFile` (the trial's
``metrics.jsonl``, one line per evaluated language) is always there; wandb or TensorBoard are
further trackers in :func:`trackers_for`.
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


def trackers_for(config: dict[str, Any], trial_dir: Path) -> list[Tracker]:
    """The trackers of a trial: metrics.jsonl, plus any the config asks for."""
    return [MetricsFile(layout.metrics_file(trial_dir))]


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
