"""The process around the loop: the console log, SIGUSR2, seeds and resources.

Nothing here knows the model or the data; the loop (``loop.py``) and the entry point
(``finetune.compute.trainer``) use these small pieces. state.json, the exit codes and the trial's
file names are ``finetune.layout``'s.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from datetime import datetime, timezone
from typing import Any


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


class Log:
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
            print(f"[{now()}] {message}", file=sys.stderr, flush=True)

    def step(self, message: str, *, plain: bool) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(message, refresh=False)
        elif plain:
            self.line(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Preemption:
    """SIGUSR2 sets a flag; the loop finishes its step, checkpoints and exits 75."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> Preemption:
        try:
            self._previous = signal.signal(signal.SIGUSR2, self._handler)
            from finetune import usr2

            self.requested = self.requested or usr2.received()  # USR2 before this handler existed
        except ValueError:  # not the main thread: no signals, checkpoint intervals still apply
            self._previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR2, self._previous)


class Preempted(Exception):
    """Raised by the loop after the preemption checkpoint is saved."""


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
