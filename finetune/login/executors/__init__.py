"""Executors: ``slurm``, ``submitit`` and ``local`` behind one small interface (see base.py)."""

from finetune.login.executors.base import ArrayJob, Executor, TaskState, make_executor, resolve_name

__all__ = ["ArrayJob", "Executor", "TaskState", "make_executor", "resolve_name"]
