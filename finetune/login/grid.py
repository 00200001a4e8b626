"""Grid expansion: a pure function from a grid config to the list of grid points.

Syntax (``{"parameters": ..., "zip": ..., "exclude": ..., "languages": ...}``):

* ``parameters``: hyperparameter -> list (swept) or scalar (fixed for every trial).
* ``zip``: groups of swept parameters whose lists have equal length and vary together
  (one axis of the product instead of one axis each).
* ``exclude``: rules ``{name: value or [values]}``; a combination matching every key of a
  rule is dropped. Keys are swept parameters or ``model_type``.
* ``languages``: ``{"train": "all" | language | [languages], "eval": ...}``; ``"all"`` means
  every language of ``datasets``. Train on the union, evaluate on each eval language.
* ``search``: sample the lists and ranges (``{"low", "high", "log"|"step"}``) with Optuna
  instead of expanding them (finetune.login.search). Without it a range is an error.

The points are the Cartesian product of the axes, in the order the parameters are written.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune.errors import Problem
from finetune.login.layers import join_path

ALL = "all"


@dataclass(frozen=True)
class Grid:
    parameters: dict[str, Any] = field(default_factory=dict)
    zip: list[list[str]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    train: str | list[str] = ALL
    eval: str | list[str] = ALL
    source: str = "<grid>"
    search: dict[str, Any] | None = None  # the search block, when the parameters are sampled

    @property
    def swept(self) -> dict[str, list[Any]]:
        return {k: v for k, v in self.parameters.items() if isinstance(v, list)}

    @property
    def fixed(self) -> dict[str, Any]:
        return {k: v for k, v in self.parameters.items() if not isinstance(v, (list, dict))}


def parse_grid(data: dict[str, Any], source: str) -> Grid:
    """A schema-valid grid config -> Grid (check ``grid_problems`` first)."""
    languages = data.get("languages") or {}
    return Grid(
        parameters=dict(data.get("parameters") or {}),
        zip=[list(g) for g in data.get("zip") or []],
        exclude=[dict(r) for r in data.get("exclude") or []],
        train=languages.get("train", ALL),
        eval=languages.get("eval", ALL),
        source=source,
        search=dict(data["search"]) if isinstance(data.get("search"), dict) else None,
    )


def grid_problems(grid: Grid, hyperparameters: Sequence[str], languages: Sequence[str] | None) -> list[Problem]:
    """Cross checks the schema cannot express; ``languages`` are the config's datasets (None:
    the grid's languages are not used, as with the matrix, and not checked)."""
    from finetune.login.schema import did_you_mean, validate_hyperparameter

    src, problems = grid.source, []
    for name, value in grid.parameters.items():
        path = join_path("$.parameters", name)
        if name not in hyperparameters:
            problems.append(Problem(src, path, "not a hyperparameter" + did_you_mean(name, hyperparameters)))
            continue
        if isinstance(value, dict):
            from finetune.login.search import range_problems

            if grid.search is None:
                problems.append(Problem(src, path, "a range ({low, high, ...}) is sampled by a search: add a "
                                        "\"search\" block, or give a list of values"))
            problems += range_problems(name, value, src)
            continue
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            at = join_path(path, i) if isinstance(value, list) else path
            problems += [Problem(src, at, m) for m in validate_hyperparameter(name, v)]
        if isinstance(value, list) and len(value) != len({_key(v) for v in value}):
            problems.append(Problem(src, path, f"has duplicate values: {value}"))
    seen: dict[str, int] = {}
    for gi, group in enumerate(grid.zip):
        lengths = set()
        for ni, name in enumerate(group):
            path = join_path(join_path("$.zip", gi), ni)
            if name not in grid.parameters:
                problems.append(Problem(src, path, f"{name!r} is not in parameters" + did_you_mean(name, grid.parameters)))
            elif not isinstance(grid.parameters[name], list):
                problems.append(Problem(src, path, f"{name!r} is fixed (a scalar); only lists can be zipped"))
            else:
                lengths.add(len(grid.parameters[name]))
            if name in seen:
                problems.append(Problem(src, path, f"{name!r} is already in zip group {seen[name]}"))
            seen.setdefault(name, gi)
        if len(lengths) > 1:
            sizes = ", ".join(f"{n}: {len(grid.parameters[n])}" for n in group
                              if isinstance(grid.parameters.get(n), list))
            problems.append(Problem(src, join_path("$.zip", gi), f"zipped lists differ in length ({sizes})"))
    swept = grid.swept
    for ri, rule in enumerate(grid.exclude):
        for name in rule:
            if name != "model_type" and name not in swept:
                problems.append(Problem(src, join_path(join_path("$.exclude", ri), name),
                                        "exclude rules may name swept parameters or model_type only"
                                        + did_you_mean(name, [*swept, "model_type"])))
    if grid.search is not None:
        from finetune.login.search import search_problems

        problems += search_problems(grid.search, grid.parameters, src, zipped=bool(grid.zip),
                                    excluded=bool(grid.exclude))
    for side in ("train", "eval") if languages is not None else ():
        value = getattr(grid, side)
        names = [value] if isinstance(value, str) else list(value)
        for i, lang in enumerate(names):
            if lang == ALL and isinstance(value, str):
                continue
            if lang not in languages:
                at = join_path("$.languages", side) if isinstance(value, str) else join_path(join_path("$.languages", side), i)
                problems.append(Problem(src, at, f"language {lang!r} is not in the config's datasets"
                                        + did_you_mean(lang, languages)))
    return problems


def _key(value: Any) -> tuple[str, Any]:
    """Comparison key: 1 and 1.0 are one value; True and 1 are not."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    return (type(value).__name__, value)


def axes(grid: Grid) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """The product's axes: (names, value tuples); a zip group is one axis."""
    swept = grid.swept
    zipped = {name: group for group in grid.zip for name in group}
    out, done = [], set()
    for name in swept:
        if name in done:
            continue
        group = tuple(zipped.get(name, [name]))
        done.update(group)
        out.append((group, list(zip(*(swept[n] for n in group), strict=True))))
    return out


def expand(grid: Grid) -> list[dict[str, Any]]:
    """Every combination of the swept parameters (fixed ones excluded), before exclude rules."""
    ax = axes(grid)
    names = [n for group, _ in ax for n in group]
    points = []
    for combo in itertools.product(*(values for _, values in ax)):
        flat = [v for tup in combo for v in tup]
        points.append(dict(zip(names, flat, strict=True)))
    return points


def count(grid: Grid) -> int:
    """Number of combinations before exclude rules (no expansion)."""
    n = 1
    for _, values in axes(grid):
        n *= len(values)
    return n


def min_count(grid: Grid) -> int:
    """At least this many points survive the exclude rules, counted without expanding anything
    (milliseconds for a 10**9 grid): the product of the axis lengths minus, for each rule, the
    most points it can match (per axis, the value tuples agreeing with the rule; a ``model_type``
    key is taken to match every point)."""
    ax = axes(grid)
    total = 1
    for _, values in ax:
        total *= len(values)
    removable = 0
    for rule in grid.exclude:
        matched = 1
        for names, values in ax:
            keys = [(i, n) for i, n in enumerate(names) if n in rule]
            if keys:
                wants = {n: [_key(w) for w in (rule[n] if isinstance(rule[n], list) else [rule[n]])] for _, n in keys}
                matched *= sum(all(_key(tup[i]) in wants[n] for i, n in keys) for tup in values)
            else:
                matched *= len(values)
        removable += matched
    return max(0, total - removable)


def excluded(point: dict[str, Any], model_type: str, rules: Sequence[dict[str, Any]]) -> bool:
    """True when ``point`` (with its model type) matches every key of some rule."""
    for rule in rules:
        for name, want in rule.items():
            have = model_type if name == "model_type" else point.get(name)
            wants = want if isinstance(want, list) else [want]
            if not any(_key(have) == _key(w) for w in wants):
                break
        else:
            return True
    return False


def language_sets(grid: Grid, languages: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train languages, eval languages), both sorted; ``"all"`` = every config language."""

    def pick(value: str | list[str]) -> list[str]:
        if value == ALL:
            return sorted(languages)
        return sorted({value} if isinstance(value, str) else set(value))

    return pick(grid.train), pick(grid.eval)
