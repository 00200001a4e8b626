"""The executor registry: a backend is one module here plus one line in ``BACKENDS``.

Classes are imported only when asked for, so listing the names costs nothing. Everything else
(submit, status, cancel, the CLI) goes through these functions and the interface of base.py,
never to one backend directly.
"""

from __future__ import annotations

import importlib
from typing import Any

from finetune.errors import UsageError
from finetune.login.executors.base import ArrayJob, Executor, SchedulerError, TaskState

# name -> "module:Class", in the order --executor lists them
BACKENDS: dict[str, str | type] = {
    "slurm": "finetune.login.executors.slurm:SlurmExecutor",
    "submitit": "finetune.login.executors.submitit_executor:SubmititExecutor",
    "local": "finetune.login.executors.local:LocalExecutor",
}
# what --executor auto tries, first available wins
AUTO = ("slurm", "local")

__all__ = ["AUTO", "BACKENDS", "ArrayJob", "Executor", "SchedulerError", "TaskState", "executor_class",
           "is_scheduler", "make_executor", "names", "register", "resolve_name"]


def names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def register(name: str, target: str | type) -> None:
    """Add (or replace) a backend: ``"module:Class"`` or the class itself."""
    BACKENDS[name] = target


def executor_class(name: str) -> type:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise UsageError(f"--executor: unknown executor {name!r}; choose one of auto, {', '.join(BACKENDS)}") from None
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
        BACKENDS[name] = target
    return target


def resolve_name(name: str) -> str:
    """``auto`` -> the first backend of ``AUTO`` that is available here (slurm when sbatch is on
    PATH, else local); any other name must be registered."""
    if name == "auto":
        for candidate in AUTO:
            if candidate in BACKENDS and executor_class(candidate).available():
                return candidate
        raise UsageError(f"--executor auto: none of {', '.join(AUTO)} is available here")
    executor_class(name)
    return name


def make_executor(name: str, **options: Any) -> Executor:
    """An executor by name (``auto`` resolved); ``options`` go to its constructor."""
    return executor_class(resolve_name(name))(**options)


def is_scheduler(name: str | None) -> bool:
    """Does this backend queue work that outlives submit (so the scheduler must be asked about it)?
    False for a name no longer registered: nothing could be asked."""
    if name not in BACKENDS:
        return False
    return bool(executor_class(name).scheduler)
