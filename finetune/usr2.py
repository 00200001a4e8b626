"""SIGUSR2 from the very first moment of a trial process (``python -m finetune train``).

SLURM (or a user) may send USR2 at any time, also before the trainer or the count workload has
installed its own handler; USR2's default action would then end the process (exit 140) instead of
the checkpoint-and-requeue protocol. ``finetune/__main__.py`` installs ``install_early`` before
anything else is imported; a later handler asks ``received()`` right after installing itself and
treats an early signal as its own.
"""

from __future__ import annotations

import signal
from typing import Any

_received = False


def _on_usr2(signum: int, frame: Any) -> None:
    global _received
    _received = True


def install_early() -> None:
    signal.signal(signal.SIGUSR2, _on_usr2)


def received() -> bool:
    """Did USR2 arrive before the trial's own handler took over?"""
    return _received
