"""The evaluation seam between a running trial and its search: report, and hear "stop".

A trial that a search worker made has a ``search`` section in its frozen config (the study trial
number and the metric). ``Reporter.from_config`` gives None for every other trial, so plain grid
trials never open a study. At every evaluation the workload calls ``report(step, rows)`` with the
evaluation's metric rows (``{"language", "split", metric: value, ...}``, as in metrics.jsonl):
the eval-split metric averaged over the languages is reported to Optuna at ``step`` (the training
step), and the answer is whether the pruner stops the trial here. A stopped trial writes
result.json with ``"state": "pruned"`` and ``"pruned_step"`` (``pruned_result``) and exits 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


class Pruned(Exception):  # noqa: N818 - an outcome, like Preempted
    """Raised by a workload when the pruner stops its trial at ``step`` (``rows``: that evaluation)."""

    def __init__(self, step: int, rows: list[dict[str, Any]]):
        super().__init__(f"pruned at step {step}")
        self.step, self.rows = step, rows


class Reporter:
    def __init__(self, plan_dir: str | Path, number: int, metric: str):
        self.plan_dir = Path(plan_dir)
        self.number = number
        self.metric = metric
        self._trial = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Reporter | None:
        search = config.get("search")
        if not isinstance(search, dict) or config.get("plan_dir") is None:
            return None
        return cls(config["plan_dir"], int(search["number"]), str(search["metric"]))

    def _optuna_trial(self):
        if self._trial is None:
            import optuna

            from finetune.login.search import load_spec, open_study

            study = open_study(self.plan_dir, load_spec(self.plan_dir))
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, self.number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def value(self, rows: list[dict[str, Any]]) -> float | None:
        values = [float(r[self.metric]) for r in rows
                  if r.get("split") == "eval" and isinstance(r.get(self.metric), (int, float))
                  and math.isfinite(r[self.metric])]
        return sum(values) / len(values) if values else None

    def report(self, step: int, rows: list[dict[str, Any]]) -> bool:
        """Report this evaluation; True when the pruner stops the trial here."""
        value = self.value(rows)
        if value is None:
            return False
        import warnings

        trial = self._optuna_trial()
        with warnings.catch_warnings():  # a resumed trial may repeat an evaluation: Optuna keeps the first
            warnings.simplefilter("ignore")
            trial.report(value, step)
        return bool(trial.should_prune())


def pruned_result(config: dict[str, Any], step: int, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """result.json of a pruned trial: the evaluation it was stopped at, as its metrics."""
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        values = {k: v for k, v in r.items() if k not in ("language", "split", "step", "epoch")}
        metrics.setdefault(str(r.get("language")), {})[str(r.get("split"))] = values
    return {"state": "pruned", "trial": config.get("id"), "model_type": config.get("model_type"),
            "train_languages": config.get("train_languages"), "eval_languages": config.get("eval_languages"),
            "hyperparameters": config.get("hyperparameters"), "pruned_step": step, "metrics": metrics, **extra}
