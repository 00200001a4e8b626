"""Collect a plan's trial results into tables: results.csv, results.md, summary.csv, best.csv.

Reads only the documented files of a plan directory (plan.json, trials/<id>/{result,state,
config}.json), so it works on a plan that is still running, was half-submitted or lost trials:
every trial in plan.json gets one row, with its state (finished, failed with the reason,
running, preempted, missing, superseded).

Seeds are replicas, not a hyperparameter: trials that differ only in ``seed`` form one
*configuration*, summarised by the mean and the sample standard deviation over its finished
seeds (``summary.csv``). For every (model type, train set, eval language) the configuration
with the best **mean** eval metric is chosen and its test mean +- std over n seeds is reported
(``best.csv``), so no cell mixes seeds and the test split never takes part in the choice.

Which eval split chooses is the *selection protocol*:

* ``train-languages`` (default, zero-shot): the mean over the training languages' eval splits.
  One choice per (model type, train set), whatever the target; a target that is not a
  training language never influences the numbers reported for it.
* ``each-language`` (the oracle protocol): the target language's own eval split.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from sys import intern
from typing import Any

from finetune import layout
from finetune.errors import Problem, UsageError
from finetune.fileio import atomic_text_writer
from finetune.login import evaluations
from finetune.login.tasks import ALL_METRICS, LOWER_IS_BETTER

# every task type's metrics, classification's first (the csv columns keep their old order)
METRICS = ("macro_f1", "accuracy", "macro_precision", "macro_recall", "loss",
           *(m for m in ALL_METRICS if m not in ("macro_f1", "accuracy", "macro_precision", "macro_recall", "loss")))
SPLITS = ("eval", "test")
STATES = ("finished", "pruned", "failed", "preempted", "running", "missing", "invalid", "superseded")
SELECTIONS = ("train-languages", "each-language")
DEFAULT_SELECTION = "train-languages"
REPLICA_KEY = "seed"  # the hyperparameter whose values are replicas of one configuration

SELECTION_TEXT = {
    "train-languages": "zero-shot: chosen on the training languages' eval splits",
    "each-language": "oracle: chosen on each target language's eval split",
}


@dataclass(slots=True)
class TrialRow:
    """One trial of the plan, whatever became of it."""

    trial_id: str
    model_type: str
    train_languages: list[str]
    eval_languages: list[str]
    hyperparameters: dict[str, Any]
    state: str  # one of STATES
    reason: str = ""
    # metrics[language][split][metric] -> value
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    best_step: int | None = None
    pruned_step: int | None = None  # a search's pruner stopped the trial at this training step
    selection: str | None = None  # training.selection of the trial (how its checkpoint was chosen)

    @property
    def train_set(self) -> str:
        return train_set_name(self.train_languages)

    @property
    def seed(self) -> Any:
        return self.hyperparameters.get(REPLICA_KEY)

    def metric(self, language: str, split: str, metric: str) -> float | None:
        value = self.metrics.get(language, {}).get(split, {}).get(metric)
        return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None below two values) over ``n`` seeds."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        vals = list(values)
        n = len(vals)
        if not n:
            return cls(None, None, 0)
        mean = math.fsum(vals) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
        return cls(mean, std, n)


@dataclass(slots=True)
class Member:
    """A trial as one configuration sees it: its id, state, seed and the scores of the
    configuration's language only (collect keeps these, not whole rows, for 100k trials)."""

    trial_id: str
    state: str
    seed: Any
    pruned_step: int | None
    language: str
    # the scores on ``language`` as a tuple in ``columns``' order (a dict per split and trial was
    # most of collect's memory); None: not finished, or no metrics for the language
    values: tuple[Any, ...] | None
    columns: dict[tuple[str, str], int]  # (split, metric) -> position, shared by one collect's members

    def metric(self, language: str, split: str, metric: str) -> float | None:
        if language != self.language or self.values is None:
            return None
        i = self.columns.get((split, metric))
        value = self.values[i] if i is not None and i < len(self.values) else None
        return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def member(row: TrialRow, language: str, columns: dict[tuple[str, str], int]) -> Member:
    """``row`` as a configuration on ``language`` keeps it; ``columns`` grows by the new metrics."""
    scores = row.metrics.get(language) if row.state == "finished" else None
    values = None
    if isinstance(scores, dict):
        for split, metrics in scores.items():
            if isinstance(metrics, dict):
                for m in metrics:
                    columns.setdefault((split, m), len(columns))
        values = tuple(metrics.get(m) if isinstance(metrics := scores.get(split), dict) else None
                       for split, m in columns)
    return Member(row.trial_id, row.state, row.seed, row.pruned_step, language, values, columns)


@dataclass
class Configuration:
    """Trials that differ only in their seed, on one eval language."""

    model_type: str
    train_set: str
    train_languages: list[str]
    language: str
    hyperparameters: dict[str, Any]  # the varying hyperparameters except the seed
    trials: list[Member]  # every trial of the configuration evaluated on ``language``
    trial_hyperparameters: dict[str, Any] = field(default_factory=dict)  # all hyperparameters of its first trial
    _finished: Any = field(default=None, repr=False, compare=False)  # (states seen, finished members)

    @property
    def finished(self) -> list[Member]:
        """Finished trials that have metrics for this language, in seed order (sorted once per
        state of the trials, not on every statistic: collect asks it a dozen times per configuration)."""
        seen = tuple((r.state, id(r.values), r.trial_id) for r in self.trials)
        if self._finished is None or self._finished[0] != seen:
            done = [r for r in self.trials if r.state == "finished" and r.values is not None]
            self._finished = (seen, sorted(done, key=lambda r: (json.dumps(r.seed, sort_keys=True), r.trial_id)))
        return list(self._finished[1])

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.finished]

    @property
    def first_id(self) -> str:
        return min(r.trial_id for r in self.trials)

    def stat(self, split: str, metric: str, language: str | None = None) -> Stat:
        lang = language or self.language
        return Stat.of(v for r in self.finished if (v := r.metric(lang, split, metric)) is not None)


@dataclass(frozen=True)
class BestCell:
    """The configuration chosen for one (model type, train set, eval language) by the mean eval metric."""

    model_type: str
    train_set: str
    language: str
    hyperparameters: dict[str, Any]  # the varying hyperparameters except the seed
    trial_ids: list[str]  # its finished trials (one per seed)
    seeds: list[Any]
    selection: str  # the protocol (SELECTIONS)
    selection_value: float  # the mean eval metric the choice was made on
    eval: Stat  # eval split of ``language``
    test: Stat  # test split of ``language``
    finished: int  # finished trials that competed for the cell
    total: int  # trials of the plan planned for the cell
    pruned_steps: tuple[int, ...] = ()  # the steps the cell's pruned trials were stopped at

    @property
    def trial_id(self) -> str:
        return self.trial_ids[0]

    @property
    def n_seeds(self) -> int:
        return len(self.trial_ids)

    @property
    def eval_value(self) -> float | None:
        return self.eval.mean

    @property
    def test_value(self) -> float | None:
        return self.test.mean


class RowSpool(Sequence[TrialRow]):
    """The rows of a collect, kept on disk as they are read (pickled in batches into an unnamed
    temporary file), not in memory: iterating reads them back a batch at a time, so a plan of
    100k trials costs the memory of one batch. Each iteration yields fresh row objects."""

    BATCH = 1000

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="finetune-collect-")
        self._batches: list[tuple[int, int, int]] = []  # (offset, size, rows)
        self._pending: list[TrialRow] = []
        self._end = 0
        self._len = 0

    def append(self, row: TrialRow) -> None:
        self._pending.append(row)
        self._len += 1
        if len(self._pending) >= self.BATCH:
            data = pickle.dumps(self._pending, protocol=pickle.HIGHEST_PROTOCOL)
            os.pwrite(self._file.fileno(), data, self._end)
            self._batches.append((self._end, len(data), len(self._pending)))
            self._end += len(data)
            self._pending = []

    def __len__(self) -> int:
        return self._len

    def _batch(self, i: int) -> list[TrialRow]:
        offset, size, _ = self._batches[i]
        return pickle.loads(os.pread(self._file.fileno(), size, offset))

    def __iter__(self) -> Iterator[TrialRow]:
        for i in range(len(self._batches)):
            yield from self._batch(i)
        yield from list(self._pending)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        i = index + self._len if index < 0 else index
        if not 0 <= i < self._len:
            raise IndexError("row index out of range")
        for b, (_, _, n) in enumerate(self._batches):
            if i < n:
                return self._batch(b)[i]
            i -= n
        return self._pending[i]


@dataclass
class Facts:
    """What the tables need from all rows, gathered in collect's one pass (no second read)."""

    languages: dict[str, None] = field(default_factory=dict)  # eval languages, first-seen order
    model_types: dict[str, None] = field(default_factory=dict)
    train_sets: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    selections: set[Any] = field(default_factory=set)  # training.selection of finished trials
    reported: set[str] = field(default_factory=set)  # metric names any trial reports
    hyper_values: dict[str, set[Any]] = field(default_factory=dict)
    hyper_rows: dict[str, int] = field(default_factory=dict)  # rows that have the key
    rows: int = 0

    def add(self, row: TrialRow) -> None:
        self.rows += 1
        for lang in row.eval_languages:
            self.languages.setdefault(lang, None)
        self.model_types.setdefault(row.model_type, None)
        self.train_sets[row.train_set] = row.train_languages
        self.counts[row.state] = self.counts.get(row.state, 0) + 1
        if row.state == "finished":
            self.selections.add(row.selection)
        for splits in row.metrics.values():
            if isinstance(splits, dict):
                for values in splits.values():
                    if isinstance(values, dict):
                        self.reported.update(values)
        for k, v in row.hyperparameters.items():
            try:  # (type, value): 1, 1.0 and True stay apart, as their JSON texts do
                self.hyper_values.setdefault(k, set()).add((type(v), v))
            except TypeError:  # a list or an object
                self.hyper_values.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
            self.hyper_rows[k] = self.hyper_rows.get(k, 0) + 1

    def varying(self) -> list[str]:
        """Hyperparameters that differ between trials (a key absent from some trials also varies)."""
        return sorted(k for k, vals in self.hyper_values.items() if len(vals) > 1 or self.hyper_rows[k] < self.rows)

    @classmethod
    def of(cls, rows: Iterable[TrialRow]) -> Facts:
        facts = cls()
        for row in rows:
            facts.add(row)
        return facts


@dataclass
class ResultsTable:
    plan_dir: Path
    metric: str
    rows: Sequence[TrialRow]  # a RowSpool from collect: iterate it, do not hold it as a list
    varying: list[str]  # hyperparameter names whose values differ between trials
    best: list[BestCell]
    configurations: list[Configuration] = field(default_factory=list)
    selection: str = DEFAULT_SELECTION
    unselectable: list[str] = field(default_factory=list)  # why some cells have no choice
    _facts: Facts | None = field(default=None, repr=False, compare=False)

    @property
    def facts(self) -> Facts:
        if self._facts is None:
            self._facts = Facts.of(self.rows)
        return self._facts

    @property
    def config_keys(self) -> list[str]:
        """The varying hyperparameters that tell configurations apart (all but the seed)."""
        return [k for k in self.varying if k != REPLICA_KEY]

    @property
    def languages(self) -> list[str]:
        """Eval languages in the plan, in first-seen order."""
        return list(self.facts.languages)

    @property
    def model_types(self) -> list[str]:
        return sorted(self.facts.model_types, key=_model_type_order)

    @property
    def train_sets(self) -> list[str]:
        seen = self.facts.train_sets
        return sorted(seen, key=lambda name: (len(seen[name]), name))

    @property
    def checkpoint_selection(self) -> str:
        """How the trainer chose each trial's best checkpoint, in words."""
        kinds = self.facts.selections
        if not kinds:
            return "no finished trials"
        if kinds == {None}:
            return "mean over all eval languages (trained before training.selection existed)"
        return ", ".join(sorted(k or "mean over all eval languages" for k in kinds))

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self.facts.counts.items():
            out[state] = out.get(state, 0) + n
        return {k: v for k, v in out.items() if v}

    def best_cell(self, model_type: str, train_set: str, language: str) -> BestCell | None:
        for cell in self.best:
            if (cell.model_type, cell.train_set, cell.language) == (model_type, train_set, language):
                return cell
        return None


def train_set_name(languages: Iterable[str]) -> str:
    """'polish+russian' for a union; order-independent so reruns name cells the same."""
    return "+".join(sorted(languages))


def _model_type_order(model_type: str) -> tuple[int, str]:
    return ({"normal": 0, "ipa": 1}.get(model_type, 2), model_type)


def collect(plan_dir: str | os.PathLike[str], *, metric: str = "macro_f1", selection: str | None = None) -> ResultsTable:
    """Read every trial of ``plan_dir``; pure apart from reading files (writes nothing).

    ``selection`` (SELECTIONS) defaults to the plan's ``training.selection``, else "train-languages".
    """
    plan_dir = Path(plan_dir)
    if metric not in METRICS:
        raise UsageError(problems=[Problem("--metric", "", f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")])
    if selection is not None and selection not in SELECTIONS:
        raise UsageError(problems=[Problem("--selection", "", f"unknown protocol {selection!r}; "
                                           f"choose one of {', '.join(SELECTIONS)}")])
    plan_file = layout.plan_file(plan_dir)
    if not plan_file.is_file():
        raise UsageError(problems=[Problem(str(plan_file), "", "no plan here; make one with `finetune plan ... --output-dir DIR`")])
    from finetune.login.plan_file import gc_paused, records

    with gc_paused():  # reading 100k trials and their files makes objects, not garbage
        plan = _read(plan_file)
        if not isinstance(plan, dict) or not isinstance(plan.get("trials"), list):
            raise UsageError(problems=[Problem(str(plan_file), "$.trials", "expected a list of trials")])
        try:  # one listing: a trial whose array task has not started it has no folder, nothing to read
            started = set(os.listdir(layout.trials_dir(plan_dir)))
        except OSError:
            started = set()
        groups = plan.get("groups") if isinstance(plan.get("groups"), dict) else {}
        rows, facts, groups_of = RowSpool(), Facts(), _Grouping()
        expected_of: dict[tuple[Any, ...], Any] = {}  # (group, eval languages) -> what the plan names now
        for i, trial in enumerate(records(plan)):
            if not isinstance(trial, dict) or not isinstance(trial.get("id"), str):
                raise UsageError(problems=[Problem(str(plan_file), f"$.trials[{i}].id",
                                                   "expected a trial with a string id")])
            group = groups.get(trial.get("group"))
            row = _row(plan_dir, trial, folder=trial["id"] in started,
                       group=group if isinstance(group, dict) else None, expected_of=expected_of)
            rows.append(row)  # to disk: what stays in memory is per configuration, not per row
            facts.add(row)
            groups_of.add(row)
            del row
    selection = selection or _plan_selection(plan) or DEFAULT_SELECTION
    varying = facts.varying()
    configs = groups_of.configurations([k for k in varying if k != REPLICA_KEY])
    best, unselectable = choose(configs, metric, selection)
    return ResultsTable(plan_dir, metric, rows, varying, best, configs, selection, unselectable, facts)


def _plan_selection(plan: dict[str, Any]) -> str | None:
    """The one training.selection of the plan's groups, when they agree on one."""
    found = set()
    for group in (plan.get("groups") or {}).values():
        training = ((group or {}).get("config") or {}).get("training") or {}
        if training.get("selection") in SELECTIONS:
            found.add(training["selection"])
    return found.pop() if len(found) == 1 else None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(problems=[Problem(str(path), "", f"cannot read: {e.strerror or e}")]) from None
    except json.JSONDecodeError as e:
        raise UsageError(problems=[Problem(str(path), "", f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")]) from None


def _try_read(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """(object, "") or (None, why): one broken trial file must not hide the other results."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None, ""  # (one call, not a test and a read: collect reads 100k trials)
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path}: unreadable ({e})"
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as e:
        return None, f"{path}: unreadable ({e})"


def _row(plan_dir: Path, trial: dict[str, Any], *, folder: bool = True, group: dict[str, Any] | None = None,
         expected_of: dict[tuple[Any, ...], Any] | None = None) -> TrialRow:
    """One trial's row; ``folder=False`` (it has none yet): "missing", no file read. ``group``: its
    plan group (what the plan names now, for finetune.login.evaluations)."""
    tdir = layout.trial_dir(plan_dir, trial["id"]) if folder else None  # (no path made for 100k missing trials)
    hyper = dict(trial.get("hyperparameters") or {})
    # (file names joined as text: a Path per file was most of the time of 100k trials)
    config, _ = _try_read(os.path.join(str(tdir), layout.CONFIG_FILE)) if tdir is not None else (None, "")
    selection = None
    if isinstance(config, dict):
        if isinstance(config.get("hyperparameters"), dict):
            hyper = {**config["hyperparameters"], **hyper}
        training = config.get("training")
        if isinstance(training, dict) and training.get("selection") in SELECTIONS:
            selection = training["selection"]
    row = TrialRow(
        trial_id=trial["id"],
        model_type=str(trial.get("model_type", "?")),
        train_languages=list(trial.get("train_languages") or []),
        eval_languages=list(trial.get("eval_languages") or []),
        hyperparameters=hyper,
        state="missing",
        selection=selection,
    )
    if tdir is not None:
        _read_outcome(row, tdir, group, config=config, expected_of=expected_of)
    superseded = trial.get("superseded_by")
    if superseded:
        # an input file changed since (see plan.py): the old numbers stay readable but never compete
        row.state, row.reason = "superseded", f"by {superseded} (inputs changed; was {row.state})"
    return row


def _read_outcome(row: TrialRow, tdir: Path, group: dict[str, Any] | None = None, *, config: Any = None,
                  expected_of: dict[tuple[Any, ...], Any] | None = None) -> None:
    """The row's state, reason and metrics from result.json, else state.json; a finished trial's
    metrics are its current scores (finetune.login.evaluations: result.json's and those of
    later evaluations of the same model, on the datasets ``group`` names now). ``config``: the
    trial's config.json as _row read it (None: missing or unreadable); ``expected_of``: a cache of
    expected datasets per (group, eval languages), shared by the trials of one collect."""
    result_path = os.path.join(str(tdir), layout.RESULT_FILE)  # (str(tdir) is what layout.result_file names)
    result, why = _try_read(result_path)
    if why:
        row.state, row.reason = "invalid", why
        return
    if not isinstance(result, dict) and (result is not None or os.path.isfile(result_path)):
        row.state, row.reason = "invalid", (f"{result_path}: not a result (a JSON object), "
                                            f"but {type(result).__name__}")
        return
    wrong = layout.result_problem(tdir, result)
    if wrong:  # another trial's result.json: its metrics and hyperparameters are not this trial's
        row.state, row.reason = "invalid", wrong
        return
    if layout.says_pruned(result):
        row.state, row.pruned_step = "pruned", result.get("pruned_step")
        row.reason = f"at step {row.pruned_step}"
        row.metrics = result.get("metrics") or {}
        return
    if result is not None and not layout.says_finished(result):  # the rule submit and status follow
        row.state, row.reason = "invalid", f"{result_path}: does not say \"state\": \"finished\""
        return
    if result is not None:
        problem = _check_result(result_path, result)
        if problem:
            row.state, row.reason = "invalid", problem
            return
        row.state = "finished"
        if not group:
            expected = None
        elif expected_of is None:
            expected = evaluations.expected_datasets(group, row.eval_languages)
        else:  # one plan group serves thousands of trials: its dataset keys are digested once
            key = (id(group), tuple(row.eval_languages))
            if key not in expected_of:
                expected_of[key] = evaluations.expected_datasets(group, row.eval_languages)
            expected = expected_of[key]
        scores = evaluations.current_scores(tdir, result, expected, config=config)
        row.metrics = _compact(scores)
        row.eval_languages += [lang for lang in row.metrics if lang not in row.eval_languages]
        row.best_step = result.get("best_step")
        if isinstance(result.get("hyperparameters"), dict):
            row.hyperparameters = {**row.hyperparameters, **result["hyperparameters"]}
        return
    state, why = _try_read(os.path.join(str(tdir), layout.STATE_FILE))
    if why:
        row.state, row.reason = "invalid", why
    elif isinstance(state, dict) and state.get("state") in layout.TRIAL_STATES:
        row.state = str(state["state"])
        row.reason = str(state.get("reason") or "")
        if row.state == "finished":  # state says finished but the result is gone
            row.state, row.reason = "invalid", (f"{result_path}: missing although "
                                                f"{layout.STATE_FILE} says finished")


def _compact(scores: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """language -> split -> metric -> value without "source", its names interned: 100k rows share
    one "macro_f1" instead of holding one copy each (json.loads makes new key strings per file)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for lang, splits in scores.items():
        out[intern(lang)] = {intern(s): {intern(m): v for m, v in values.items()} if isinstance(values, dict) else values
                             for s, values in splits.items() if s != "source"}
    return out


def _check_result(path: Path, result: dict[str, Any]) -> str:
    metrics = result.get("metrics")
    if metrics is None and result.get("workload") == "count":
        return ""  # the submit stand-in: finished, nothing to score
    if not isinstance(metrics, dict):
        return f"{path}: $.metrics: expected an object"
    for lang, splits in metrics.items():
        if not isinstance(splits, dict):
            return f"{path}: $.metrics.{lang}: expected an object of splits"
        for split, values in splits.items():
            if not isinstance(values, dict):
                return f"{path}: $.metrics.{lang}.{split}: expected an object of metrics"
    return ""


class _Grouping:
    """Trials grouped into configurations as they are read, before the varying hyperparameters
    are known: by every hyperparameter but the seed (trials alike in all of them are alike in the
    varying ones); ``configurations`` then merges the groups that agree on the varying ones."""

    def __init__(self) -> None:
        # (model type, train set, language, hyperparameters but the seed as JSON) ->
        # [first row's number, its train languages, its hyperparameters, members]
        self.groups: dict[tuple[str, str, str, str], list[Any]] = {}
        self.n = 0
        self.columns: dict[tuple[str, str], int] = {}

    def add(self, row: TrialRow) -> None:
        text = json.dumps({k: v for k, v in row.hyperparameters.items() if k != REPLICA_KEY}, sort_keys=True)
        for lang in row.eval_languages:
            key = (row.model_type, row.train_set, lang, text)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = [self.n, list(row.train_languages), row.hyperparameters, []]
            group[3].append(member(row, lang, self.columns))
        self.n += 1

    def configurations(self, keys: list[str]) -> list[Configuration]:
        out: dict[tuple[str, str, str, str], Configuration] = {}
        for (model_type, train_set, lang, _), (_, train_languages, hyper_all, members) in \
                sorted(self.groups.items(), key=lambda kv: kv[1][0]):
            hyper = {k: hyper_all.get(k) for k in keys}
            key = (model_type, train_set, lang, json.dumps(hyper, sort_keys=True))
            if key not in out:
                out[key] = Configuration(model_type, train_set, train_languages, lang, hyper, [], dict(hyper_all))
            out[key].trials.extend(members)
        # stable: within a cell, configurations keep the plan's (grid's) order
        return sorted(out.values(), key=lambda c: _cell_order(c.model_type, c.train_set, c.language))


def configurations(rows: Iterable[TrialRow], keys: list[str]) -> list[Configuration]:
    """Group trials by (model type, train set, eval language, hyperparameters except the seed)."""
    grouping = _Grouping()
    for row in rows:
        grouping.add(row)
    return grouping.configurations(keys)


def _cell_order(model_type: str, train_set: str, language: str) -> tuple[Any, ...]:
    return (_model_type_order(model_type), train_set.count("+"), train_set, language)


def _selection_value(config: Configuration, by_lang: dict[str, Configuration], metric: str,
                     selection: str) -> float | None:
    """The mean eval metric a configuration is chosen on, or None when it cannot be chosen."""
    if selection == "each-language":
        return config.stat("eval", metric).mean
    values = []
    for lang in config.train_languages:
        twin = by_lang.get(lang)  # the same configuration's trials, scored on the training language
        mean = twin.stat("eval", metric).mean if twin else None
        if mean is None:
            return None
        values.append(mean)
    return math.fsum(values) / len(values) if values else None


def choose(configs: list[Configuration], metric: str, selection: str = DEFAULT_SELECTION) -> tuple[list[BestCell], list[str]]:
    """The best configuration per (model type, train set, eval language) by mean eval ``metric``.

    Ties go to the configuration with the smallest trial id, so reruns choose the same one.
    Returns the chosen cells and, for cells with finished trials but no choice, why not.
    """
    by_config: dict[tuple[str, str, str], dict[str, Configuration]] = {}
    cells: dict[tuple[str, str, str], list[Configuration]] = {}
    for c in configs:
        key_text = json.dumps(c.hyperparameters, sort_keys=True)
        by_config.setdefault((c.model_type, c.train_set, key_text), {})[c.language] = c
        cells.setdefault((c.model_type, c.train_set, c.language), []).append(c)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    out, why = [], []
    for (model_type, train_set, lang), members in cells.items():
        scored = []
        for c in members:
            if not c.finished:
                continue
            twins = by_config[(c.model_type, c.train_set, json.dumps(c.hyperparameters, sort_keys=True))]
            value = _selection_value(c, twins, metric, selection)
            if value is not None:
                scored.append((value, c))
        total = sum(len(c.trials) for c in members)
        competing = sum(len(c.finished) for c in members)
        if not scored:
            if competing:
                why.append(f"{model_type}, train {train_set}, eval {lang}: no finished configuration has eval "
                           f"{metric} on every training language ({selection} selection)")
            continue
        value, best = min(scored, key=lambda vc: (-sign * vc[0], vc[1].first_id))
        pruned = tuple(sorted(r.pruned_step for c in members for r in c.trials
                              if r.state == "pruned" and r.pruned_step is not None))
        out.append(BestCell(
            model_type, train_set, lang, dict(best.hyperparameters), [r.trial_id for r in best.finished],
            best.seeds, selection, value, best.stat("eval", metric), best.stat("test", metric), competing, total,
            pruned,
        ))
    out.sort(key=lambda c: _cell_order(c.model_type, c.train_set, c.language))
    return out, why


# ---------------------------------------------------------------- rendering (pure: text out)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _fmt_metric(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def fmt_stat(stat: Stat) -> str:
    """'0.5123 ± 0.0100 (n=3)'; the std is left out below two seeds."""
    if stat.mean is None:
        return "n/a"
    spread = f" ± {stat.std:.4f}" if stat.std is not None else ""
    return f"{stat.mean:.4f}{spread} (n={stat.n})"


def _reported(table: ResultsTable) -> list[str]:
    """The metrics the trials report, in METRICS order (a classification plan has no f1 column)."""
    present = table.facts.reported
    return [m for m in METRICS if m in present or (not present and m in METRICS[:5])]


def csv_text(table: ResultsTable) -> str:
    """Every trial, every metric of every eval language: the machine-readable table."""
    buf = io.StringIO()
    write_csv(table, buf)
    return buf.getvalue()


def write_csv(table: ResultsTable, out: Any) -> None:
    """``csv_text`` into the text file ``out``, a row at a time."""
    langs = table.languages
    metric_cols = [(lang, split, m) for lang in langs for split in SPLITS for m in _reported(table)]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(
        ["trial", "model_type", "train_set", "state", "reason", "best_step", *table.varying]
        + [f"{lang}/{split}/{m}" for lang, split, m in metric_cols]
    )
    for row in table.rows:
        w.writerow(
            [row.trial_id, row.model_type, row.train_set, row.state, row.reason,
             _fmt(row.best_step), *(_fmt(row.hyperparameters.get(k)) for k in table.varying)]
            + [_fmt_metric(row.metric(lang, split, m)) for lang, split, m in metric_cols]
        )


def summary_csv_text(table: ResultsTable) -> str:
    """One row per configuration and eval language: n_seeds and mean/std of every split and metric."""
    keys = table.config_keys
    cols = [(split, m) for split in SPLITS for m in _reported(table)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model_type", "train_set", "eval_language", *keys, "n_seeds"]
               + [f"{split}/{m}/{what}" for split, m in cols for what in ("mean", "std")])
    for c in table.configurations:
        stats = [c.stat(split, m) for split, m in cols]
        w.writerow([c.model_type, c.train_set, c.language, *(_fmt(c.hyperparameters.get(k)) for k in keys),
                    len(c.finished)]
                   + [x for s in stats for x in (_fmt_metric(s.mean), _fmt_metric(s.std))])
    return buf.getvalue()


def best_csv_text(table: ResultsTable) -> str:
    """One row per (model type, train set, eval language): the chosen configuration and its scores."""
    keys = table.config_keys
    m = table.metric
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model_type", "train_set", "eval_language", *keys, "n_seeds",
                f"eval/{m}/mean", f"test/{m}/mean", f"test/{m}/std", "selection"])
    for c in table.best:
        w.writerow([c.model_type, c.train_set, c.language, *(_fmt(c.hyperparameters.get(k)) for k in keys),
                    c.n_seeds, _fmt_metric(c.eval.mean), _fmt_metric(c.test.mean), _fmt_metric(c.test.std),
                    c.selection])
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: Iterable[list[str]]) -> Iterator[str]:
    yield "| " + " | ".join(head) + " |"
    yield "|" + "---|" * len(head)
    empty = True
    for row in rows:
        empty = False
        yield "| " + " | ".join(_md_escape(c) for c in row) + " |"
    if empty:
        yield "| " + " | ".join(["n/a"] * len(head)) + " |"


def protocol_text(table: ResultsTable) -> str:
    """The selection protocol in one line, for outputs and plot titles."""
    return f"selection {table.selection} ({SELECTION_TEXT[table.selection]})"


def markdown_text(table: ResultsTable) -> str:
    """A human report: one row per trial, then one per configuration (over seeds), then the choice per cell."""
    return "".join(line + "\n" for line in markdown_lines(table))


def markdown_lines(table: ResultsTable) -> Iterator[str]:
    """``markdown_text`` a line at a time (without line ends); the trials' table is made as the
    rows are read back, never held whole."""
    m = table.metric
    langs = table.languages
    counts = ", ".join(f"{n} {s}" for s, n in table.counts().items())
    yield from [f"# Results: {table.plan_dir.name}", "", f"{len(table.rows)} trials: {counts}.", "",
                f"Hyperparameters: {protocol_text(table)}; seeds are replicas (mean ± sample std over n seeds).",
                f"Best checkpoint of each trial: {table.checkpoint_selection}.", ""]
    head = ["trial", "model", "train set", *table.varying, "state"]
    head += [f"{lang} {split} {m}" for lang in langs for split in SPLITS]

    def trial_rows() -> Iterator[list[str]]:
        for row in table.rows:
            state = row.state + (f": {row.reason}" if row.reason else "")
            cells = [row.trial_id, row.model_type, row.train_set]
            cells += [_fmt(row.hyperparameters.get(k)) for k in table.varying]
            cells += [state]
            cells += [
                _fmt_metric(row.metric(lang, split, m)) if lang in row.eval_languages else "-"
                for lang in langs for split in SPLITS
            ]
            yield cells
    yield from _md_table(head, trial_rows())

    yield from ["", f"## Configurations over seeds ({m}, mean ± std (n))", ""]
    keys = table.config_keys
    head = ["model", "train set", "eval language", *keys, "seeds", f"eval {m}", f"test {m}"]
    rows = ([c.model_type, c.train_set, c.language, *(_fmt(c.hyperparameters.get(k)) for k in keys),
             ", ".join(_fmt(s) for s in c.seeds) or "-", fmt_stat(c.stat("eval", m)), fmt_stat(c.stat("test", m))]
            for c in table.configurations)
    yield from _md_table(head, rows)

    yield from ["", f"## Best hyperparameters per cell (mean eval {m} over seeds, {protocol_text(table)}; "
                    f"reporting test {m})", ""]
    head = ["model", "train set", "eval language", "hyperparameters", "trials", f"chosen on (eval {m})",
            f"eval {m}", f"test {m}", "finished"]
    best = []
    for c in table.best:
        hp = ", ".join(f"{k}={_fmt(v)}" for k, v in c.hyperparameters.items()) or "-"
        best.append([c.model_type, c.train_set, c.language, hp, ", ".join(c.trial_ids), _fmt_metric(c.selection_value),
                     fmt_stat(c.eval), fmt_stat(c.test), f"{c.finished}/{c.total}"])
    yield from _md_table(head, best)
    if table.unselectable:
        yield from ["", "Cells without a choice:", *(f"- {w}" for w in table.unselectable)]


def write_tables(table: ResultsTable) -> tuple[Path, ...]:
    """Write results.csv, results.md, summary.csv and best.csv into the plan dir, atomically; the
    per-trial tables are written a row at a time as the rows are read back from disk."""
    paths = []
    for name in ("results.csv", "results.md", "summary.csv", "best.csv"):
        path = table.plan_dir / name
        with atomic_text_writer(path) as f:
            if name == "results.csv":
                write_csv(table, f)
            elif name == "results.md":
                for line in markdown_lines(table):
                    f.write(line + "\n")
            else:
                f.write(summary_csv_text(table) if name == "summary.csv" else best_csv_text(table))
        paths.append(path)
    return tuple(paths)
