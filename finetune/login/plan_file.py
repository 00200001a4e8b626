"""plan.json: the trial record, the file's format, and its validation.

Format (version 2; ARCHITECTURE.md "Plan directory")::

    {"version": 2,
     "sources": [...],                      # one per build: files, overrides, grid config, ...
     "groups": {GROUP: {...}},              # the shared resolved config of one build
     "sets": [                              # what many trials share: one line each
       {"group", "model_type", "train_languages", "eval_languages", "hyperparameters"}, ...],
     "trials": [                            # one small line per trial
       {"id", "set", "grid_point", "lineage"[, "superseded_by"]}, ...]}

A trial's hyperparameters are its set's, updated with its ``grid_point``; a 100k-trial grid is a
few sets and 100k lines of about 100 bytes (10 MB), which load in well under a second. Version 1
(every record whole: ``{"id", "model_type", "train_languages", "eval_languages",
"hyperparameters", "group", "grid_point", "lineage"}``) is still read; the next write turns it
into version 2.

Validation (``parse``) happens once, when the file is read: trial ids (12 lowercase hex digits:
an id names a folder, so ``"../../evil"`` must never become a path), unique ids, the fields and
types of every set and record, and every hyperparameter against the schema. It runs in bulk
(one check per distinct value, one regular expression over all ids); only when something is
wrong does it walk the records one by one to name each problem's JSON path.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from finetune.errors import ConfigError, Problem

PLAN_VERSION = 2
READABLE_VERSIONS = (1, 2)
TRIAL_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_IDS_RE = re.compile(r"(?:[0-9a-f]{12}\n)*")
SET_KEYS = ("group", "model_type", "train_languages", "eval_languages", "hyperparameters")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


class Trial:
    """One trial of a plan. ``hyperparameters`` is made on first use from ``base`` (the
    hyperparameters it shares with its set, one dict object for many trials) and ``grid_point``,
    so loading a 100k-trial plan makes no 100k merged dicts that nothing reads."""

    __slots__ = ("id", "model_type", "train_languages", "eval_languages", "_hyperparameters", "group",
                 "grid_point", "point_text", "lineage", "superseded_by", "base")

    def __init__(self, id: str, model_type: str, train_languages: list[str], eval_languages: list[str],
                 hyperparameters: dict[str, Any] | None, group: str, grid_point: dict[str, Any] | None = None,
                 point_text: str | None = None, lineage: str | None = None, superseded_by: str | None = None,
                 base: dict[str, Any] | None = None) -> None:
        self.id = id
        self.model_type = model_type
        self.train_languages = train_languages
        self.eval_languages = eval_languages
        self._hyperparameters = hyperparameters  # None: {**base, **grid_point}, made when asked
        self.group = group
        self.grid_point = {} if grid_point is None else grid_point
        self.point_text = point_text  # grid_point as plan.json holds it, when known
        self.lineage = lineage  # the id without the input fingerprints: one per trial whatever the files hold
        self.superseded_by = superseded_by  # a newer trial of the same lineage (its input files changed)
        self.base = base

    @property
    def hyperparameters(self) -> dict[str, Any]:
        if self._hyperparameters is None:
            self._hyperparameters = {**(self.base or {}), **self.grid_point}
        return self._hyperparameters

    @hyperparameters.setter
    def hyperparameters(self, value: dict[str, Any]) -> None:
        self._hyperparameters = value
        self.base = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trial) and self.record() == other.record()

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass

    def __repr__(self) -> str:
        return (f"Trial(id={self.id!r}, model_type={self.model_type!r}, train_languages={self.train_languages!r}, "
                f"eval_languages={self.eval_languages!r}, hyperparameters={self.hyperparameters!r}, "
                f"group={self.group!r}, grid_point={self.grid_point!r})")

    def record(self) -> dict[str, Any]:
        """The whole record (plan.json version 1's form; also an array task's index line)."""
        r = {"id": self.id, "model_type": self.model_type, "train_languages": self.train_languages,
             "eval_languages": self.eval_languages, "hyperparameters": self.hyperparameters,
             "group": self.group, "grid_point": self.grid_point}
        if self.lineage:
            r["lineage"] = self.lineage
        if self.superseded_by:
            r["superseded_by"] = self.superseded_by
        return r

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Trial:
        """The trial of a whole record, or of one whose set's hyperparameters are ``"shared"``
        (an index line, ``finetune.login.batch.record_text``)."""
        point = r.get("grid_point") or {}
        hyper = r["hyperparameters"] if "hyperparameters" in r else {**r["shared"], **point}
        return cls(r["id"], r["model_type"], r["train_languages"], r["eval_languages"], hyper,
                   r["group"], point, lineage=r.get("lineage"), superseded_by=r.get("superseded_by"))

    def shared(self) -> dict[str, Any]:
        """The hyperparameters that are not its grid point's (its set's)."""
        if self.base is None:
            self.base = {k: v for k, v in self.hyperparameters.items() if k not in self.grid_point}
        return self.base


# ---------------------------------------------------------------------------------------------
# writing


def dump(version: int, sources: list[Any], groups: dict[str, Any], trials: list[Trial]) -> str:
    """plan.json's text: the header indented, then one set and one trial per line."""
    sets, index = trial_sets(trials)
    head = json.dumps({"version": version, "sources": sources, "groups": groups}, indent=2, ensure_ascii=False)
    set_lines = ",\n    ".join(_encode(s) for s in sets)
    body = ",\n    ".join(record_line(t, i) for t, i in zip(trials, index, strict=True))
    return (head[:-2] + ',\n  "sets": [\n    ' + set_lines + '\n  ],\n  "trials": [\n    ' + body
            + ("\n  ]\n}\n" if body else "]\n}\n"))


TAIL = "\n  ]\n}\n"  # how dump ends a plan with trials


def appended(old_text: str, old_data: dict[str, Any], old_trials: list[Trial], trials: list[Trial],
             groups: dict[str, Any], sources: list[Any]) -> str | None:
    """plan.json's text with ``trials`` (the old ones first, in their order) made by keeping
    ``old_text`` byte for byte and adding the new trials' lines; None when that would not be what
    ``dump`` writes: a header (groups, sources, sets) or an old trial's line changed, or a new
    trial needs a set the file lacks. Replanning an extended grid then encodes only its new trials."""
    n = len(old_trials)
    sets = old_data.get("sets")
    if (old_data.get("version") != PLAN_VERSION or not n or len(trials) <= n or not old_text.endswith(TAIL)
            or not isinstance(sets, list) or groups != old_data.get("groups") or sources != old_data.get("sources")):
        return None
    index = {(s["group"], s["model_type"], tuple(s["train_languages"]), tuple(s["eval_languages"]),
              json.dumps(s["hyperparameters"], sort_keys=True, default=str)): i for i, s in enumerate(sets)}
    known: dict[tuple, int | None] = {}
    keep: list[Any] = []  # the objects whose id() is a key of known

    def set_of(t: Trial) -> int | None:
        base = t.shared()
        fast = (t.group, t.model_type, id(t.train_languages), id(t.eval_languages), id(base))
        if fast not in known:
            keep.append((t.train_languages, t.eval_languages, base))
            known[fast] = index.get((t.group, t.model_type, tuple(t.train_languages), tuple(t.eval_languages),
                                     json.dumps(base, sort_keys=True, default=str)))
        return known[fast]

    for before, now in zip(old_trials, trials, strict=False):
        if now is before:
            continue  # (a mark set on it, superseded_by, is the caller's to rule out)
        if (now.id != before.id or now.grid_point != before.grid_point or now.lineage != before.lineage
                or now.superseded_by != before.superseded_by or set_of(now) != set_of(before)):
            return None
    lines = []
    for t in trials[n:]:
        i = set_of(t)
        if i is None:
            return None
        lines.append(record_line(t, i))
    return old_text[:-len(TAIL)] + ",\n    " + ",\n    ".join(lines) + TAIL


def record_line(trial: Trial, set_index: int | None = None) -> str:
    """One trial's line in plan.json (version 2); without ``set_index``, without its set."""
    point = trial.point_text if trial.point_text is not None else _encode(trial.grid_point)
    text = '{"id": "' + trial.id + '"' + ("" if set_index is None else ', "set": ' + str(set_index))
    text += ', "grid_point": ' + point
    if trial.lineage:
        text += ', "lineage": ' + _encode(trial.lineage)
    if trial.superseded_by:
        text += ', "superseded_by": ' + _encode(trial.superseded_by)
    return text + "}"


def trial_sets(trials: list[Trial]) -> tuple[list[dict[str, Any]], list[int]]:
    """The distinct sets of ``trials`` (group, model type, languages, shared hyperparameters) and
    each trial's index into them. A base dict shared by many trials is encoded once."""
    sets: list[dict[str, Any]] = []
    by_key: dict[tuple, int] = {}
    by_object: dict[tuple, int] = {}
    keep_alive: list[Any] = []  # the id() keys below stay unique while their objects live
    out: list[int] = []
    for t in trials:
        base = t.shared()
        fast = (t.group, t.model_type, id(t.train_languages), id(t.eval_languages), id(base))
        i = by_object.get(fast)
        if i is None:
            keep_alive.append((t.train_languages, t.eval_languages, base))
            key = (t.group, t.model_type, tuple(t.train_languages), tuple(t.eval_languages), json.dumps(base, sort_keys=True, default=str))
            i = by_key.get(key)
            if i is None:
                i = by_key[key] = len(sets)
                sets.append({"group": t.group, "model_type": t.model_type, "train_languages": t.train_languages,
                             "eval_languages": t.eval_languages, "hyperparameters": base})
            by_object[fast] = i
        out.append(i)
    return sets, out


# ---------------------------------------------------------------------------------------------
# reading


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection while a big plan is read: building 100k trials (or rows) would start
    collections that walk every object made so far, about a third of the time, and find nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def parse(path: str, data: Any) -> tuple[list[Trial], dict[str, Any], list[Any], int]:
    """(trials, groups, sources, version) of plan.json's parsed ``data``; ConfigError listing
    every problem when it is not a valid plan (nothing may be written or run from it)."""
    if not isinstance(data, dict) or data.get("version") not in READABLE_VERSIONS:
        raise ConfigError(problems=[Problem(path, "$.version",
                                            f"unsupported plan version (expected one of {READABLE_VERSIONS})")])
    groups, sources = data.get("groups", {}), data.get("sources", [])
    if data["version"] == 1:
        records = data.get("trials", [])
        problems = v1_record_problems(path, records)
        if problems:  # a hand-edited plan.json
            raise ConfigError("invalid plan:", problems=problems)
        return [Trial.from_record(r) for r in records], groups, sources, 1
    sets, records = data.get("sets"), data.get("trials")
    problems = set_problems(path, sets)
    if not problems:
        problems = record_problems(path, records, len(sets)) if not _records_look_right(records, len(sets)) else []
    if problems:
        raise ConfigError("invalid plan:", problems=problems)
    shared = [(s["group"], s["model_type"], s["train_languages"], s["eval_languages"], s["hyperparameters"])
              for s in sets]
    trials = []
    append = trials.append
    for r in records:
        group, mt, train, evals, base = shared[r["set"]]
        point = r["grid_point"]
        append(Trial(r["id"], mt, train, evals, None, group, point, None, r.get("lineage"),
                     r.get("superseded_by"), base))
    return trials, groups, sources, 2


def records(data: Any) -> Iterator[dict[str, Any]]:
    """Every trial of plan.json's ``data`` as a whole record (version 1's form), leniently:
    for readers that only need what a trial is (collect). Not validated; a record that is not an
    object is yielded as it is."""
    if not isinstance(data, dict):
        return
    trials = data.get("trials")
    if not isinstance(trials, list):
        return
    sets = data.get("sets")
    if data.get("version") != 2 or not isinstance(sets, list):
        yield from trials
        return
    for r in trials:
        s = sets[r["set"]] if isinstance(r, dict) and type(r.get("set")) is int and 0 <= r["set"] < len(sets) else None
        if not isinstance(s, dict):
            yield r
            continue
        point = r.get("grid_point") if isinstance(r.get("grid_point"), dict) else {}
        out = {k: s.get(k) for k in SET_KEYS}
        out.update(r)
        out["hyperparameters"] = {**(s.get("hyperparameters") or {}), **point}
        yield out


def hyper_key(name: str, value: Any) -> tuple:
    """A cache key for one (hyperparameter, value): True, 1 and 1.0 are told apart."""
    try:
        hash(value)
        return (name, type(value), value)
    except TypeError:
        return (name, "json", json.dumps(value, sort_keys=True, default=str))


class _HyperChecks:
    """Schema checks of hyperparameter values, each distinct (name, value) once."""

    def __init__(self) -> None:
        from finetune.login.schema import hyperparameter_names

        self.known = set(hyperparameter_names())
        self.done: dict[tuple, list[str]] = {}

    def messages(self, name: str, value: Any) -> list[str]:
        if name not in self.known:
            return []
        key = hyper_key(name, value)
        found = self.done.get(key)
        if found is None:
            from finetune.login.schema import validate_hyperparameter

            found = self.done[key] = validate_hyperparameter(name, value)
        return found

    def problems(self, path: str, where: str, hyper: dict[str, Any]) -> list[Problem]:
        return [Problem(path, f"{where}.{name}", msg) for name, value in hyper.items()
                for msg in self.messages(name, value)]


def _is_strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_FIELDS = {"model_type": ("a string", lambda v: isinstance(v, str)),
           "group": ("a string", lambda v: isinstance(v, str)),
           "train_languages": ("a list of strings", _is_strings),
           "eval_languages": ("a list of strings", _is_strings),
           "hyperparameters": ("an object", lambda v: isinstance(v, dict))}


def set_problems(path: str, sets: Any) -> list[Problem]:
    """Everything wrong with plan.json's ``sets``: fields, types, hyperparameter values."""
    if not isinstance(sets, list):
        return [Problem(path, "$.sets", "must be a list of trial sets")]
    checks = _HyperChecks()
    out: list[Problem] = []
    for i, s in enumerate(sets):
        where = f"$.sets[{i}]"
        if not isinstance(s, dict):
            out.append(Problem(path, where, "must be a trial set (an object)"))
            continue
        out += _shared_problems(path, where, s, checks)
    return out


def _shared_problems(path: str, where: str, obj: dict[str, Any], checks: _HyperChecks) -> list[Problem]:
    """What a version 2 set and a version 1 record both hold (SET_KEYS): present, of their type,
    and each hyperparameter against the schema."""
    out: list[Problem] = []
    for key in SET_KEYS:
        kind, ok = _FIELDS[key]
        if key not in obj:
            out.append(Problem(path, f"{where}.{key}", "missing"))
        elif not ok(obj[key]):
            out.append(Problem(path, f"{where}.{key}", f"must be {kind}"))
    if isinstance(obj.get("hyperparameters"), dict):
        out += checks.problems(path, f"{where}.hyperparameters", obj["hyperparameters"])
    return out


def _records_look_right(records: Any, n_sets: int) -> bool:
    """The bulk check of version 2's trial records: True when nothing is wrong with them (then
    nothing more is asked), False when ``record_problems`` must say what is."""
    if not isinstance(records, list):
        return False
    try:  # r["id"] works on objects alone (a list or string raises TypeError)
        ids = [r["id"] for r in records]
        indices = {r["set"] for r in records}
        points = [r["grid_point"] for r in records]
    except (KeyError, TypeError):
        return False
    if not all(type(x) is str for x in ids) or not _IDS_RE.fullmatch("\n".join(ids) + "\n" if ids else ""):
        return False
    if len(set(ids)) != len(ids) or any(type(x) is not int or not 0 <= x < n_sets for x in indices):
        return False
    items: set[tuple[str, Any]] = set()
    try:
        for p in points:
            items.update(p.items())
    except (AttributeError, TypeError):  # not an object, or a list value: the careful walk
        return False
    # a set holds one of 1, 1.0 and True: harmless for numbers (jsonschema counts 1.0 as an
    # integer), not for booleans, so the values of names with a boolean are checked by type too
    with_bool = {name for p in points for name, value in p.items() if value is True or value is False}
    distinct = {hyper_key(name, value): (name, value) for name, value in items}
    for name in with_bool:
        distinct.update((hyper_key(name, p[name]), (name, p[name])) for p in points if name in p)
    checks = _HyperChecks()
    if any(checks.messages(name, value) for name, value in distinct.values()):
        return False
    optional = [r[k] for r in records for k in ("lineage", "superseded_by") if k in r]
    return all(type(x) is str for x in optional) and bool(_IDS_RE.fullmatch("\n".join(optional) + "\n"
                                                                            if optional else ""))


def _walk(path: str, records: Any, check: Callable[[str, dict[str, Any], _HyperChecks], list[Problem]]
          ) -> list[Problem]:
    """The walk both versions share: a list of objects, each with a trial id no other record has;
    ``check(where, record, hyperparameter_checks)`` adds what the version's record holds."""
    if not isinstance(records, list):
        return [Problem(path, "$.trials", "must be a list of trial records")]
    checks = _HyperChecks()
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        where = f"$.trials[{i}]"
        if not isinstance(r, dict):
            out.append(Problem(path, where, "must be a trial record (an object)"))
            continue
        tid = r.get("id")
        if not isinstance(tid, str) or not TRIAL_ID_RE.match(tid):
            out.append(Problem(path, f"{where}.id", f"{tid!r} is not a trial id (12 lowercase hex digits)"))
        elif tid in seen:
            out.append(Problem(path, f"{where}.id", f"{tid} appears twice (also $.trials[{seen[tid]}])"))
        else:
            seen[tid] = i
        out += check(where, r, checks)
    return out


def record_problems(path: str, records: Any, n_sets: int) -> list[Problem]:
    """Every problem of version 2's trial records, each with its JSON path (the slow walk)."""

    def check(where: str, r: dict[str, Any], checks: _HyperChecks) -> list[Problem]:
        out: list[Problem] = []
        s = r.get("set")
        if "set" not in r:
            out.append(Problem(path, f"{where}.set", "missing"))
        elif type(s) is not int or not 0 <= s < n_sets:
            out.append(Problem(path, f"{where}.set", f"{s!r} is not the index of a set in $.sets (0 to {n_sets - 1})"))
        point = r.get("grid_point")
        if "grid_point" not in r:
            out.append(Problem(path, f"{where}.grid_point", "missing"))
        elif not isinstance(point, dict):
            out.append(Problem(path, f"{where}.grid_point", "must be an object"))
        else:
            out += checks.problems(path, f"{where}.grid_point", point)
        for key in ("lineage", "superseded_by"):
            if key in r and not (isinstance(r[key], str) and TRIAL_ID_RE.match(r[key])):
                out.append(Problem(path, f"{where}.{key}", f"{r[key]!r} is not a trial id (12 lowercase hex digits)"))
        return out

    return _walk(path, records, check)


def v1_record_problems(path: str, records: Any) -> list[Problem]:
    """Everything wrong with version 1's whole trial records: ids, unique ids, the fields every
    record has, and each hyperparameter against the schema."""
    return _walk(path, records, lambda where, r, checks: _shared_problems(path, where, r, checks))
