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
import hashlib
import heapq
import io
import json
import marshal
import math
import os
import pickle
import re
import tempfile
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
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


def _two_sum(a: float, b: float) -> tuple[float, float]:
    """(s, e): s = a + b rounded, and e exactly what rounding lost (a + b == s + e exactly)."""
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


def _partials(values: Iterable[float]) -> list[float]:
    """Floats whose exact sum is that of ``values``, few and not overlapping (Shewchuk, as
    math.fsum sums): a long list of residuals folded into a handful of floats."""
    partials: list[float] = []
    for x in values:
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            x, y = _two_sum(x, y)
            if y:
                partials[i] = y
                i += 1
        partials[i:] = [x]
    return partials


class _Scores:
    """Running sums of one configuration's scores on one language, in place of a list per seed
    (collect's memory is then per configuration, not per trial): per (split, metric) column, at
    the position a collect's ``Columns`` gives it, 4 floats: the count, the sum exactly as
    hi + lo (what two floats cannot hold goes to a short list of residuals, so the mean is
    math.fsum's to the last bit and ties between configurations still tie) and Welford's sum of
    squared deviations (the sample std, equal to the two-pass one but for rounding). +-inf
    values are counted aside (rare: no slot for them)."""

    __slots__ = ("a", "rest")

    def __init__(self) -> None:
        self.a = array("d")
        self.rest: dict[Any, Any] | None = None  # column -> exact residuals of its sum; (column, +-1) -> infs

    def add(self, scores: dict[str, Any], columns: Columns) -> None:
        """One trial's scores on the language: {split: {metric: value}}; a value counts when it
        is a number and not NaN, as TrialRow.metric reads it."""
        a = self.a
        for split, metrics in scores.items():
            if not isinstance(metrics, dict):
                continue
            where = columns.of_split(split)
            for m, x in metrics.items():
                b = where.get(m)
                if b is None:
                    b = columns.add(split, m)
                if type(x) is not float:  # (the common case first: this runs for every score of every trial)
                    if not isinstance(x, (int, float)):
                        continue
                    x = float(x)
                if x != x:
                    continue
                if len(a) <= b:
                    a.extend([0.0] * (b + 4 - len(a)))
                n = a[b] + 1.0
                a[b] = n
                if x - x:  # +-inf (NaN never comes here): its sign is noted, once
                    if self.rest is None:
                        self.rest = {}
                    self.rest[(b, 1 if x > 0 else -1)] = True
                    continue
                hi = a[b + 1]
                s, err = _two_sum(hi, x)
                a[b + 1] = s
                if err:
                    a[b + 2], lost = _two_sum(a[b + 2], err)
                    if lost:
                        self._keep(b, lost)
                if n > 1.0:  # Welford, with the means from the exact running sums
                    a[b + 3] += (x - hi / (n - 1.0)) * (x - s / n)

    def _keep(self, i: int, lost: float) -> None:
        if self.rest is None:
            self.rest = {}
        kept = self.rest.setdefault(i, [])
        kept.append(lost)
        if len(kept) > 16:  # folded: a few floats hold any number of residuals exactly
            self.rest[i] = _partials(kept)

    def parts(self, b: int) -> tuple[int, list[float], float, float] | None:
        """(count, floats whose exact sum is the column's (one +-inf for any), the mean of the
        finite values, their sum of squared deviations; nan with an inf), None: no values.
        ``b``: the column's position (Columns)."""
        a = self.a
        if b >= len(a) or not a[b]:
            return None
        n, hi, lo, m2 = a[b:b + 4]
        rest = self.rest or {}
        sums = [hi, lo, *(rest.get(b) or ())]
        infs = [math.inf] * bool(rest.get((b, 1))) + [-math.inf] * bool(rest.get((b, -1)))
        if infs:
            return int(n), sums + infs, math.nan, math.nan
        return int(n), sums, math.fsum(sums) / n, m2


class Columns:
    """(split, metric) -> position in the _Scores of one collect (shared by its configurations):
    the index of the column's first float (4 a column)."""

    def __init__(self) -> None:
        self.splits: dict[str, dict[str, int]] = {}
        self.n = 0

    def of_split(self, split: str) -> dict[str, int]:
        where = self.splits.get(split)
        if where is None:
            where = self.splits[split] = {}
        return where

    def add(self, split: str, metric: str) -> int:
        self.n += 1
        b = self.of_split(split)[metric] = 4 * (self.n - 1)
        return b

    def get(self, key: tuple[str, str]) -> int | None:
        return self.splits.get(key[0], {}).get(key[1])


def _stat(parts: list[tuple[int, list[float], float, float]]) -> Stat:
    """Stat.of's mean (exactly: math.fsum of the values over n) and sample std (to rounding)
    from the running sums of one or more parts of a configuration."""
    n = sum(p[0] for p in parts)
    if not n:
        return Stat(None, None, 0)
    mean = math.fsum(x for p in parts for x in p[1]) / n
    if n < 2:
        return Stat(mean, None, n)
    if any(math.isnan(p[3]) for p in parts):  # an inf: Stat.of's two-pass std is nan then
        return Stat(mean, math.nan, n)
    m2 = math.fsum(p[3] + p[0] * (p[2] - mean) ** 2 for p in parts) if len(parts) > 1 else parts[0][3]
    return Stat(mean, math.sqrt(m2 / (n - 1)), n)


class _Group:
    """Trials of one (model type, train set, eval language, hyperparameters but the seed), as
    collect keeps them: counts, the smallest trial id, pruned steps, the seeds and ids of the
    finished ones (16 bytes a trial: an interned seed text and the id as an integer) and
    _Scores. Nothing else of a trial stays in memory."""

    __slots__ = ("n", "train_languages", "hyper", "total", "first_id", "pruned", "seeds", "ids", "scores")

    def __init__(self, n: int, train_languages: list[str], hyper: dict[str, Any], trial_id: str) -> None:
        self.n, self.train_languages, self.hyper = n, train_languages, hyper
        self.total, self.first_id = 0, trial_id
        self.pruned: list[Any] = []
        self.seeds: list[str] = []  # json.dumps(seed, sort_keys=True) of each finished trial, interned
        self.ids: array[int] | list[str] = array("Q")  # their ids (as integers while all are 12 hex digits)
        self.scores = _Scores()

    def add_id(self, trial_id: str) -> None:
        ids = self.ids
        if isinstance(ids, array):
            if len(trial_id) == 12 and _HEX12.fullmatch(trial_id):
                ids.append(int(trial_id, 16))
                return
            ids = self.ids = [format(v, "012x") for v in ids]
        ids.append(trial_id)

    def finished(self) -> list[tuple[str, str]]:
        """(seed text, trial id) of the finished trials."""
        ids = self.ids
        names = (format(v, "012x") for v in ids) if isinstance(ids, array) else ids
        return list(zip(self.seeds, names, strict=True))


_HEX12 = re.compile(r"[0-9a-f]{12}")


SEED_CACHE = 256  # seeds whose JSON text and value collect keeps at hand (a plan has a few)
_seed_values: dict[str, Any] = {}


def _seed_value(text: str) -> Any:
    """A seed from its JSON text (the few seeds of a plan are parsed once; a list or object anew)."""
    value = _seed_values.get(text, _seed_values)
    if value is _seed_values:
        value = json.loads(text)
        if isinstance(value, (list, dict)):
            return value
        if len(_seed_values) < SEED_CACHE:
            _seed_values[text] = value
    return value


@dataclass(slots=True)
class Configuration:
    """Trials that differ only in their seed, on one eval language (their running sums: see
    _Group and _Scores). Its statistics are made when asked, not kept (a few KB a configuration,
    and a plan of 100k trials may have 100k configurations)."""

    model_type: str
    train_set: str
    train_languages: list[str]
    language: str
    hyperparameters: dict[str, Any]  # the varying hyperparameters except the seed
    parts: list[_Group]  # its trials as collect grouped them (one group but for odd hyperparameters)
    columns: Columns  # (split, metric) -> position in the parts' _Scores
    trial_hyperparameters: dict[str, Any] = field(default_factory=dict)  # all hyperparameters of its first trial

    @property
    def total(self) -> int:
        """Trials of the configuration evaluated on ``language``, whatever their state."""
        return sum(g.total for g in self.parts)

    @property
    def n_finished(self) -> int:
        """Finished trials that have metrics for this language."""
        return sum(len(g.seeds) for g in self.parts)

    def _finished(self) -> list[tuple[str, str]]:
        """(seed text, id) of the finished trials in seed order, then id (made when asked, not
        kept: kept for every configuration they would be a tuple per trial again)."""
        return sorted(x for g in self.parts for x in g.finished())

    @property
    def trial_ids(self) -> list[str]:
        """The finished trials' ids, in seed order."""
        return [tid for _, tid in self._finished()]

    @property
    def seeds(self) -> list[Any]:
        """The finished trials' seeds, in order (their texts sorted: no ids needed for that)."""
        return [_seed_value(text) for text in sorted(s for g in self.parts for s in g.seeds)]

    @property
    def first_id(self) -> str:
        return min(g.first_id for g in self.parts)

    @property
    def pruned_steps(self) -> list[Any]:
        return [s for g in self.parts for s in g.pruned]

    def stat(self, split: str, metric: str, language: str | None = None) -> Stat:
        if language is not None and language != self.language:
            return Stat(None, None, 0)
        i = self.columns.get((split, metric))
        return _stat([p for g in self.parts if i is not None and (p := g.scores.parts(i)) is not None])


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


def _row_tuple(row: TrialRow) -> tuple[Any, ...]:
    """A row's fields in TrialRow's order: what RowSpool pickles (a slotted dataclass pickles
    through a Python call per object, a tuple of plain values at C speed)."""
    return (row.trial_id, row.model_type, row.train_languages, row.eval_languages, row.hyperparameters,
            row.state, row.reason, row.metrics, row.best_step, row.pruned_step, row.selection)


class RowSpool(Sequence[TrialRow]):
    """The rows of a collect, kept on disk as they are read (pickled in batches into an unnamed
    temporary file), not in memory: iterating reads them back a batch at a time, so a plan of
    100k trials costs the memory of one batch. Each iteration yields fresh row objects."""

    BATCH = 1000

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="finetune-collect-")
        self._batches: list[tuple[int, int, int]] = []  # (offset, size, rows)
        self._pending: list[tuple[Any, ...]] = []  # rows as _row_tuple
        self._end = 0
        self._len = 0

    def append(self, row: TrialRow) -> None:
        self._pending.append(_row_tuple(row))
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
        return [TrialRow(*t) for t in pickle.loads(os.pread(self._file.fileno(), size, offset))]

    def __iter__(self) -> Iterator[TrialRow]:
        for i in range(len(self._batches)):
            yield from self._batch(i)
        yield from [TrialRow(*t) for t in pickle.loads(pickle.dumps(self._pending))]

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
        return TrialRow(*pickle.loads(pickle.dumps(self._pending[i])))


@dataclass
class Facts:
    """What the tables need from all rows, gathered in collect's one pass (no second read)."""

    languages: dict[str, None] = field(default_factory=dict)  # eval languages, first-seen order
    model_types: dict[str, None] = field(default_factory=dict)
    train_sets: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    selections: set[Any] = field(default_factory=set)  # training.selection of finished trials
    reported: set[str] = field(default_factory=set)  # metric names any trial reports
    hyper_values: dict[str, set[Any]] = field(default_factory=dict)  # two at most: enough to vary
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
        values, rows = self.hyper_values, self.hyper_rows
        for k, v in row.hyperparameters.items():
            rows[k] = rows.get(k, 0) + 1
            seen = values.get(k)
            if seen is None:
                seen = values[k] = set()
            elif len(seen) > 1:
                continue  # it varies: more values would only cost memory (one per configuration)
            try:  # (type, value): 1, 1.0 and True stay apart, as their JSON texts do
                seen.add((type(v), v))
            except TypeError:  # a list or an object
                seen.add(json.dumps(v, sort_keys=True))

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
    _configurations: list[Configuration] | _Partitions = field(default_factory=list)
    selection: str = DEFAULT_SELECTION
    unselectable: list[str] = field(default_factory=list)  # why some cells have no choice
    _facts: Facts | None = field(default=None, repr=False, compare=False)

    def iter_configurations(self) -> Iterator[Configuration]:
        """The configurations in the tables' order (cell, then the plan's), read back from
        collect's partitions one at a time (never all in memory)."""
        configs = self._configurations
        return iter(configs) if isinstance(configs, list) else configs.configurations()

    @property
    def configurations(self) -> list[Configuration]:
        """All configurations, in memory (the tables iterate iter_configurations instead)."""
        return list(self.iter_configurations())

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
    from finetune.login.plan_stream import NotStreamable, open_plan

    with gc_paused():  # reading 100k trials and their files makes objects, not garbage
        try:  # one trial record in memory at a time (plan.json as dump writes it)
            plan, trials = open_plan(str(plan_file))
            rows, facts, groups_of = _read_trials(plan_dir, plan, trials, _partition_count(plan_file))
        except (NotStreamable, OSError, UsageError) as e:
            whole = _read(plan_file)  # read whole: json names what is wrong with the file, if anything
            if isinstance(e, UsageError):
                raise
            plan = whole
            if not isinstance(plan, dict) or not isinstance(plan.get("trials"), list):
                raise UsageError(problems=[Problem(str(plan_file), "$.trials", "expected a list of trials")]) from None
            rows, facts, groups_of = _read_trials(plan_dir, plan, records(plan), _partition_count(plan_file))
    selection = selection or _plan_selection(plan) or DEFAULT_SELECTION
    varying = facts.varying()
    groups_of.aggregate([k for k in varying if k != REPLICA_KEY], metric, selection)
    best, unselectable = _fold_choices(groups_of.scored(), metric, selection)
    return ResultsTable(plan_dir, metric, rows, varying, best, groups_of, selection, unselectable, facts)


def _read_trials(plan_dir: Path, plan: dict[str, Any], trials: Iterable[Any],
                 partitions: int = 1) -> tuple[RowSpool, Facts, _Partitions]:
    """The one pass over the trials: each row to disk, its facts kept, and what its
    configuration needs to disk too (one of ``partitions`` files, by configuration)."""
    plan_file = layout.plan_file(plan_dir)
    base = str(layout.trials_dir(plan_dir))
    groups = plan.get("groups") if isinstance(plan.get("groups"), dict) else {}
    rows, facts, groups_of = RowSpool(), Facts(), _Partitions(partitions)
    expected_of: dict[tuple[Any, ...], Any] = {}  # (group, eval languages) -> what the plan names now
    for i, trial in enumerate(trials):
        if not isinstance(trial, dict) or not isinstance(trial.get("id"), str):
            raise UsageError(problems=[Problem(str(plan_file), f"$.trials[{i}].id",
                                               "expected a trial with a string id")])
        tid = trial["id"]
        # (text, not a Path per trial: that was much of the time of 100k trials)
        tdir = os.path.join(base, tid) if _HEX12.fullmatch(tid) else str(layout.trial_dir(plan_dir, tid))
        # one listing of the trial's folder: only the files that are there are opened (no listing
        # of trials/ held in memory); a trial whose array task has not started it has no folder,
        # and nothing is opened for it
        try:
            present, folder = os.listdir(tdir), True
        except (FileNotFoundError, NotADirectoryError):
            present, folder = None, False
        except OSError:  # (unlistable: try each file, as without a listing)
            present, folder = None, True
        group = groups.get(trial.get("group"))
        row = _row(plan_dir, trial, folder=folder, group=group if isinstance(group, dict) else None,
                   expected_of=expected_of, tdir=tdir, present=present)
        rows.append(row)  # to disk: what stays in memory is per configuration, not per row
        facts.add(row)
        groups_of.add(row)
        del row
    return rows, facts, groups_of


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
         expected_of: dict[tuple[Any, ...], Any] | None = None, tdir: str | None = None,
         present: Collection[str] | None = None) -> TrialRow:
    """One trial's row; ``folder=False`` (it has none yet): "missing", no file read. ``group``: its
    plan group (what the plan names now, for finetune.login.evaluations); ``tdir``: its folder's
    path as collect joined it; ``present``: the names in the folder (None: unknown, try each)."""
    if not folder:
        tdir = None
    elif tdir is None:
        tdir = str(layout.trial_dir(plan_dir, trial["id"]))
    hyper = dict(trial.get("hyperparameters") or {})
    # (file names joined as text: a Path per file was most of the time of 100k trials)
    config, _ = _try_read(os.path.join(str(tdir), layout.CONFIG_FILE)) \
        if tdir is not None and (present is None or layout.CONFIG_FILE in present) else (None, "")
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
        _read_outcome(row, tdir, group, config=config, expected_of=expected_of, present=present)
    superseded = trial.get("superseded_by")
    if superseded:
        # an input file changed since (see login/supersede.py): the old numbers stay readable but never compete
        row.state, row.reason = "superseded", f"by {superseded} (inputs changed; was {row.state})"
    return row


def _read_outcome(row: TrialRow, tdir: str | Path, group: dict[str, Any] | None = None, *, config: Any = None,
                  expected_of: dict[tuple[Any, ...], Any] | None = None,
                  present: Collection[str] | None = None) -> None:
    """The row's state, reason and metrics from result.json, else state.json; a finished trial's
    metrics are its current scores (finetune.login.evaluations: result.json's and those of
    later evaluations of the same model, on the datasets ``group`` names now). ``config``: the
    trial's config.json as _row read it (None: missing or unreadable); ``expected_of``: a cache of
    expected datasets per (group, eval languages), shared by the trials of one collect."""
    result_path = os.path.join(str(tdir), layout.RESULT_FILE)  # (str(tdir) is what layout.result_file names)
    there = present is None or layout.RESULT_FILE in present
    result, why = _try_read(result_path) if there else (None, "")
    if why:
        row.state, row.reason = "invalid", why
        return
    if not isinstance(result, dict) and (result is not None or (there and os.path.isfile(result_path))):
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
        evaluated = {} if present is not None and layout.EVALUATIONS_FILE not in present else evaluations.UNREAD
        scores = evaluations.current_scores(tdir, result, expected, config=config, evaluated=evaluated)
        row.metrics = _compact(scores)
        row.eval_languages += [lang for lang in row.metrics if lang not in row.eval_languages]
        row.best_step = result.get("best_step")
        if isinstance(result.get("hyperparameters"), dict):
            row.hyperparameters = {**row.hyperparameters, **result["hyperparameters"]}
        return
    state, why = _try_read(os.path.join(str(tdir), layout.STATE_FILE)) \
        if present is None or layout.STATE_FILE in present else (None, "")
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


def _key_digest(hyper: dict[str, Any]) -> bytes:
    """A trial's grouping key: marshal's bytes of its sorted hyperparameters but the seed (values
    equal in type and bits: as their JSON texts are equal, at a fifth of json.dumps's cost), as a
    16-byte digest (one key a configuration and language stays small). What JSON alone equates
    (a list and a tuple, a nested object's key order) lands in two groups that
    ``_Grouping.configurations`` merges. (marshal version 2: no back-references, whose flags
    depend on reference counts, not on values.)"""
    return hashlib.blake2b(marshal.dumps(sorted(kv for kv in hyper.items() if kv[0] != REPLICA_KEY), 2),
                           digest_size=16).digest()


PARTITION_TRIALS = 5000  # collect aggregates about this many trials at a time
PLAN_BYTES_PER_TRIAL = 125  # about what a trial takes in plan.json (how many trials: not known before reading)


def _partition_count(plan_file: Path) -> int:
    """How many partitions collect spreads a plan's configurations over: one (all in memory)
    for a plan under PARTITION_TRIALS trials, one more for each PARTITION_TRIALS more."""
    try:
        size = os.path.getsize(plan_file)
    except OSError:
        return 1
    return max(1, size // (PARTITION_TRIALS * PLAN_BYTES_PER_TRIAL))


class _Partitions:
    """collect's configurations, aggregated a partition at a time so that memory does not grow
    with them: each row's grouping record goes to one of ``count`` unnamed temporary files,
    chosen by its configuration (so a configuration's trials, on every eval language, share
    one); ``aggregate`` then groups one partition at a time (as _Grouping, rows in plan order:
    the same running sums), values its configurations under the selection protocol (their
    twins are in the same partition) and writes them back sorted in the tables' order
    (cell, then first appearance); ``configurations`` and ``scored`` merge the sorted files
    (heapq.merge), a few configurations of each in memory. One partition: all in memory."""

    PENDING = 4096  # records waiting in memory, all partitions together
    BATCH = 8  # configurations a pickle in the sorted files (one pickle of each partition in memory when merged)

    def __init__(self, count: int = 1) -> None:
        self.count = max(1, count)
        self.n = 0
        self.grouping: _Grouping | None = _Grouping() if self.count == 1 else None
        self.files: list[Any] = [None] * self.count
        self.batches: list[list[tuple[int, int]]] = [[] for _ in range(self.count)]
        self.ends = [0] * self.count
        self.pending: list[list[tuple[Any, ...]]] = [[] for _ in range(self.count)]
        self.limit = max(1, self.PENDING // self.count)
        self.memory: list[tuple[Configuration, float | None]] = []  # one partition: aggregated
        self.sorted: list[tuple[Any, array[int]]] = []  # (file, where its pickles start and end) of each partition

    def add(self, row: TrialRow) -> None:
        digest = _key_digest(row.hyperparameters)
        if self.grouping is not None:
            self.grouping.add(row, self.n, digest)
            self.n += 1
            return
        i = int.from_bytes(_partition_key(row, digest), "little") % self.count
        metrics = row.metrics if row.state == "finished" else {}
        pending = self.pending[i]
        pending.append((self.n, digest, row.trial_id, row.model_type, row.train_languages, row.eval_languages,
                        row.hyperparameters, row.state, metrics, row.pruned_step))
        self.n += 1
        if len(pending) >= self.limit:
            self._flush(i)

    def _flush(self, i: int) -> None:
        if not self.pending[i]:
            return
        if self.files[i] is None:
            self.files[i] = tempfile.TemporaryFile(prefix="finetune-collect-", buffering=0)
        data = pickle.dumps(self.pending[i], protocol=pickle.HIGHEST_PROTOCOL)
        os.pwrite(self.files[i].fileno(), data, self.ends[i])
        self.batches[i].append((self.ends[i], len(data)))
        self.ends[i] += len(data)
        self.pending[i] = []

    def _records(self, i: int) -> Iterator[tuple[Any, ...]]:
        self._flush(i)
        for offset, size in self.batches[i]:
            yield from pickle.loads(os.pread(self.files[i].fileno(), size, offset))

    def aggregate(self, keys: list[str], metric: str, selection: str) -> None:
        """Each partition's configurations (merged by ``keys``, the varying hyperparameters but
        the seed) with the values they are chosen on, sorted, to disk (in memory: one partition)."""
        for i in range(self.count):
            if self.grouping is not None:
                grouping = self.grouping
            else:
                grouping = _Grouping()
                for n, digest, tid, mt, tl, el, hyper, state, metrics, pruned in self._records(i):
                    grouping.add(TrialRow(tid, mt, tl, el, hyper, state, "", metrics, None, pruned), n, digest)
                if self.files[i] is not None:
                    self.files[i].close()
                self.files[i], self.batches[i] = None, []
            configs = grouping.configurations(keys)
            by_config: dict[tuple[str, str, str], dict[str, Configuration]] = {}
            for c in configs:
                by_config.setdefault((c.model_type, c.train_set, json.dumps(c.hyperparameters, sort_keys=True)),
                                     {})[c.language] = c
            if self.grouping is not None:
                self.memory = [(c, _value_of(c, by_config, metric, selection)) for c in configs]
                self.grouping = None
                return
            items = sorted(((_cell_order(c.model_type, c.train_set, c.language), c.parts[0].n), c,
                            _value_of(c, by_config, metric, selection)) for c in configs)
            del configs, by_config, grouping
            out = tempfile.TemporaryFile(prefix="finetune-collect-", buffering=0)
            ends = array("Q", [0])  # where each pickle starts, and the end
            for b in range(0, len(items), self.BATCH):
                data = pickle.dumps(items[b:b + self.BATCH], protocol=pickle.HIGHEST_PROTOCOL)
                os.pwrite(out.fileno(), data, ends[-1])
                ends.append(ends[-1] + len(data))
            self.sorted.append((out, ends))

    def _sorted(self, j: int) -> Iterator[tuple[Any, Configuration, float | None]]:
        out, ends = self.sorted[j]
        for b in range(len(ends) - 1):
            yield from pickle.loads(os.pread(out.fileno(), ends[b + 1] - ends[b], ends[b]))

    def scored(self) -> Iterator[tuple[Configuration, float | None]]:
        """(configuration, the value it is chosen on or None) in the tables' order."""
        if not self.sorted:
            yield from self.memory
            return
        for _, c, value in heapq.merge(*(self._sorted(j) for j in range(len(self.sorted))), key=lambda t: t[0]):
            yield c, value

    def configurations(self) -> Iterator[Configuration]:
        for c, _ in self.scored():
            yield c


def _partition_key(row: TrialRow, digest: bytes) -> bytes:
    """8 bytes that a configuration's trials share on every eval language: its model type,
    train set and grouping key, the key made as JSON where JSON equates what marshal does not
    (a nested object's key order, 0.0 and -0.0: one value of a hyperparameter that does not vary)."""
    canon = digest
    hyper = row.hyperparameters
    for v in hyper.values():
        t = type(v)
        if t is dict or t is list or (t is float and not v):
            canon = json.dumps({k: 0.0 if type(x) is float and not x else x for k, x in hyper.items()
                                if k != REPLICA_KEY}, sort_keys=True).encode()
            break
    return hashlib.blake2b(b"\0".join((row.model_type.encode(), row.train_set.encode(), canon)),
                           digest_size=8).digest()


class _Grouping:
    """Trials grouped into configurations as they are read, before the varying hyperparameters
    are known: by every hyperparameter but the seed (trials alike in all of them are alike in the
    varying ones); ``configurations`` then merges the groups that agree on the varying ones."""

    def __init__(self) -> None:
        # (model type, train set, language, hyperparameters but the seed) -> its _Group
        self.groups: dict[tuple[str, str, str, bytes], _Group] = {}
        self.n = 0
        self.columns = Columns()
        self._seed_texts: dict[Any, str] = {}  # (type, seed) -> its JSON text, interned

    def _seed_text(self, seed: Any) -> str:
        try:
            key = (type(seed), seed)
            text = self._seed_texts.get(key)
        except TypeError:  # a list or an object
            return intern(json.dumps(seed, sort_keys=True))
        if text is None:
            text = intern(json.dumps(seed, sort_keys=True))
            if len(self._seed_texts) < SEED_CACHE:  # (a search may have one a trial: not all are kept)
                self._seed_texts[key] = text
        return text

    def add(self, row: TrialRow, n: int | None = None, digest: bytes | None = None) -> None:
        """``n``: the row's index in the plan (default: the count of rows added); ``digest``: its
        key as _key_digest makes it (made here when not given)."""
        if n is not None:
            self.n = n
        hyper = row.hyperparameters
        text = digest if digest is not None else _key_digest(hyper)
        finished = row.state == "finished"
        seed = self._seed_text(row.seed) if finished else ""
        pruned = row.state == "pruned" and row.pruned_step is not None
        tid = row.trial_id
        for lang in row.eval_languages:
            key = (row.model_type, row.train_set, lang, text)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = _Group(self.n, list(row.train_languages), hyper, tid)
            group.total += 1
            if tid < group.first_id:
                group.first_id = tid
            if pruned:
                group.pruned.append(row.pruned_step)
            if finished:
                scores = row.metrics.get(lang)
                if isinstance(scores, dict):
                    group.seeds.append(seed)
                    group.add_id(tid)
                    group.scores.add(scores, self.columns)
        self.n += 1

    def configurations(self, keys: list[str]) -> list[Configuration]:
        out: dict[tuple[str, str, str, str], Configuration] = {}
        for (model_type, train_set, lang, _), group in sorted(self.groups.items(), key=lambda kv: kv[1].n):
            hyper = {k: group.hyper.get(k) for k in keys}
            key = (model_type, train_set, lang, json.dumps(hyper, sort_keys=True))
            if key not in out:
                out[key] = Configuration(model_type, train_set, group.train_languages, lang, hyper, [],
                                         self.columns, group.hyper)  # (its first trial's, not a copy)
            out[key].parts.append(group)
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
    def scored() -> Iterator[tuple[Configuration, float | None]]:
        for members in cells.values():  # (a cell's configurations one after another, as the fold wants)
            for c in members:
                yield c, _value_of(c, by_config, metric, selection)
    return _fold_choices(scored(), metric, selection)


def _value_of(c: Configuration, by_config: dict[tuple[str, str, str], dict[str, Configuration]], metric: str,
              selection: str) -> float | None:
    """The value ``c`` is chosen on (None: it cannot be); ``by_config``: the configurations by
    (model type, train set, hyperparameters' JSON) and language (its twins among them)."""
    if not c.n_finished:
        return None
    twins = by_config[(c.model_type, c.train_set, json.dumps(c.hyperparameters, sort_keys=True))]
    return _selection_value(c, twins, metric, selection)


def _fold_choices(scored: Iterable[tuple[Configuration, float | None]], metric: str,
                  selection: str) -> tuple[list[BestCell], list[str]]:
    """choose's choices from the configurations with their values, each cell's configurations
    one after another (a stream: only the cell's running best is held): the smallest
    (-sign * value, first id), the first of equals, as min() picks."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    out: list[BestCell] = []
    why: list[str] = []
    cell: tuple[str, str, str] | None = None
    best: Any = None  # (key, value, configuration) of the cell's best so far
    total = competing = 0
    pruned: list[Any] = []

    def close() -> None:
        if cell is None:
            return
        model_type, train_set, lang = cell
        if best is None:
            if competing:
                why.append(f"{model_type}, train {train_set}, eval {lang}: no finished configuration has eval "
                           f"{metric} on every training language ({selection} selection)")
            return
        _, value, c = best
        out.append(BestCell(
            model_type, train_set, lang, dict(c.hyperparameters), c.trial_ids,
            c.seeds, selection, value, c.stat("eval", metric), c.stat("test", metric), competing, total,
            tuple(sorted(pruned)),
        ))

    for c, value in scored:
        key = (c.model_type, c.train_set, c.language)
        if key != cell:
            close()
            cell, best, total, competing, pruned = key, None, 0, 0, []
        total += c.total
        competing += c.n_finished
        pruned += c.pruned_steps
        if value is not None and c.n_finished:
            rank = (-sign * value, c.first_id)
            if best is None or rank < best[0]:
                best = (rank, value, c)
    close()
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
    head, cells = _csv_rows(table)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(head)
    for row in table.rows:
        w.writerow(cells(row))


def _csv_rows(table: ResultsTable) -> tuple[list[str], Callable[[TrialRow], list[str]]]:
    """results.csv's header and how a row becomes its line's cells."""
    langs = table.languages
    reported = _reported(table)
    varying = table.varying
    head = (["trial", "model_type", "train_set", "state", "reason", "best_step", *varying]
            + [f"{lang}/{split}/{m}" for lang in langs for split in SPLITS for m in reported])

    def cells(row: TrialRow) -> list[str]:
        hyper = row.hyperparameters
        return ([row.trial_id, row.model_type, row.train_set, row.state, row.reason,
                 _fmt(row.best_step), *(_fmt(hyper.get(k)) for k in varying)]
                + _metric_cells(row.metrics, langs, reported))
    return head, cells


def _metric_cells(metrics: dict[str, Any], langs: list[str], names: list[str]) -> list[str]:
    """[_fmt_metric(row.metric(lang, split, m)) for lang in langs for split in SPLITS for m in
    names], without a method call per cell (collect writes millions of them at 100k trials)."""
    cells: list[str] = []
    for lang in langs:
        splits = metrics.get(lang)
        for split in SPLITS:
            values = splits.get(split) if isinstance(splits, dict) else None
            if not isinstance(values, dict):
                cells += [""] * len(names)
                continue
            for m in names:
                v = values.get(m)
                cells.append(f"{float(v):.4f}" if isinstance(v, (int, float)) and v == v else "")
    return cells


def summary_csv_text(table: ResultsTable) -> str:
    """One row per configuration and eval language: n_seeds and mean/std of every split and metric."""
    buf = io.StringIO()
    write_summary_csv(table, buf)
    return buf.getvalue()


def write_summary_csv(table: ResultsTable, out: Any) -> None:
    """``summary_csv_text`` into the text file ``out``, a configuration at a time."""
    keys = table.config_keys
    cols = [(split, m) for split in SPLITS for m in _reported(table)]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["model_type", "train_set", "eval_language", *keys, "n_seeds"]
               + [f"{split}/{m}/{what}" for split, m in cols for what in ("mean", "std")])
    for c in table.iter_configurations():
        stats = [c.stat(split, m) for split, m in cols]
        w.writerow([c.model_type, c.train_set, c.language, *(_fmt(c.hyperparameters.get(k)) for k in keys),
                    c.n_finished]
                   + [x for s in stats for x in (_fmt_metric(s.mean), _fmt_metric(s.std))])


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
    yield from _md_head(head)
    empty = True
    for row in rows:
        empty = False
        yield _md_line(row)
    if empty:
        yield _md_line(["n/a"] * len(head))


def _md_head(head: list[str]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def _md_line(cells: list[str]) -> str:
    return "| " + " | ".join(_md_escape(c) for c in cells) + " |"


def protocol_text(table: ResultsTable) -> str:
    """The selection protocol in one line, for outputs and plot titles."""
    return f"selection {table.selection} ({SELECTION_TEXT[table.selection]})"


def markdown_text(table: ResultsTable) -> str:
    """A human report: one row per trial, then one per configuration (over seeds), then the choice per cell."""
    return "".join(line + "\n" for line in markdown_lines(table))


def markdown_lines(table: ResultsTable) -> Iterator[str]:
    """``markdown_text`` a line at a time (without line ends); the trials' table is made as the
    rows are read back, never held whole."""
    top, head, cells = _md_trials(table)
    yield from top
    yield from _md_table(head, (cells(row) for row in table.rows))
    yield from _md_rest(table)


def _md_trials(table: ResultsTable) -> tuple[list[str], list[str], Callable[[TrialRow], list[str]]]:
    """results.md's lines before the trials' table, that table's header, and how a row becomes
    its line's cells."""
    m = table.metric
    langs = table.languages
    counts = ", ".join(f"{n} {s}" for s, n in table.counts().items())
    top = [f"# Results: {table.plan_dir.name}", "", f"{len(table.rows)} trials: {counts}.", "",
           f"Hyperparameters: {protocol_text(table)}; seeds are replicas (mean ± sample std over n seeds).",
           f"Best checkpoint of each trial: {table.checkpoint_selection}.", ""]
    varying = table.varying
    head = ["trial", "model", "train set", *varying, "state"]
    head += [f"{lang} {split} {m}" for lang in langs for split in SPLITS]
    columns = [lang for lang in langs for _ in SPLITS]

    def cells(row: TrialRow) -> list[str]:
        state = row.state + (f": {row.reason}" if row.reason else "")
        out = [row.trial_id, row.model_type, row.train_set]
        out += [_fmt(row.hyperparameters.get(k)) for k in varying]
        out.append(state)
        scores = _metric_cells(row.metrics, langs, [m])
        evaluated = row.eval_languages
        out += [score if lang in evaluated else "-" for lang, score in zip(columns, scores, strict=True)]
        return out
    return top, head, cells


def _md_rest(table: ResultsTable) -> Iterator[str]:
    """results.md's lines after the trials' table: configurations over seeds, then the choices."""
    m = table.metric
    yield from ["", f"## Configurations over seeds ({m}, mean ± std (n))", ""]
    keys = table.config_keys
    head = ["model", "train set", "eval language", *keys, "seeds", f"eval {m}", f"test {m}"]
    rows = ([c.model_type, c.train_set, c.language, *(_fmt(c.hyperparameters.get(k)) for k in keys),
             ", ".join(_fmt(s) for s in c.seeds) or "-", fmt_stat(c.stat("eval", m)), fmt_stat(c.stat("test", m))]
            for c in table.iter_configurations())
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
    per-trial tables of results.csv and results.md are written a row at a time, in one reading
    of the rows back from disk."""
    paths = tuple(table.plan_dir / name for name in ("results.csv", "results.md", "summary.csv", "best.csv"))
    csv_head, csv_cells = _csv_rows(table)
    top, md_head, md_cells = _md_trials(table)
    # (results.md's writer is entered first so that results.csv, left first, is in place first)
    with atomic_text_writer(paths[1]) as md, atomic_text_writer(paths[0]) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(csv_head)
        md.writelines(line + "\n" for line in top + _md_head(md_head))
        empty = True
        for row in table.rows:
            empty = False
            w.writerow(csv_cells(row))
            md.write(_md_line(md_cells(row)) + "\n")
        if empty:
            md.write(_md_line(["n/a"] * len(md_head)) + "\n")
        md.writelines(line + "\n" for line in _md_rest(table))
    with atomic_text_writer(paths[2]) as f:  # (a configuration at a time: a row each)
        write_summary_csv(table, f)
    with atomic_text_writer(paths[3]) as f:
        f.write(best_csv_text(table))
    return paths
