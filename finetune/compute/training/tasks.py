"""Which task class trains a trial: classification, question answering or causal LM."""

from __future__ import annotations

from typing import Any

from finetune.compute.training.settings import Settings
from finetune.compute.training.task import ClassificationTask
from finetune.errors import ConfigError


def task_for(config: dict[str, Any], settings: Settings, *, file: str) -> Any:
    """The task of a trial config, by its datasets' task type; its selection metric must be one it reports."""
    from finetune.compute.data import trial_task_type
    from finetune.login.tasks import metric_problems

    kind = trial_task_type(config)
    problems = metric_problems(kind, settings.metric, source=file)
    if problems:
        raise ConfigError(problems=problems)
    if kind == "question-answering":
        from finetune.compute.training.other_tasks import QATask

        return QATask(config, settings, file=file)
    if kind == "causal-lm":
        from finetune.compute.training.other_tasks import CausalLMTask

        return CausalLMTask(config, settings, file=file)
    return ClassificationTask(config, settings, file=file)
