"""Two conditions of a plan compared per cell and over the whole matrix, seeds pooled.

A *condition* fixes some trial fields, e.g. ``model_type=ipa`` against ``model_type=normal``,
or ``learning_rate=1e-4`` against ``learning_rate=1e-3``. The remaining fields (model type,
train set, eval language, minus the condition's keys) make the *cells*. In each cell, each
condition contributes the configuration that the plan's selection protocol chooses among the
configurations matching it (results.choose: mean over seeds, zero-shot by default), so the
test compares exactly what the heatmaps show.

Seeds pair the two conditions: seed s of A against seed s of B on the same examples is one
stratum, and the stratified test (significance.stratified_test) pools them. Over the matrix,
every cell's strata are pooled again, and per-cell p-values also come Holm-adjusted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from finetune.analysis.predictions import Predictions, load_predictions, missing_error
from finetune.analysis.results import (
    REPLICA_KEY,
    BestCell,
    Configuration,
    ResultsTable,
    choose,
    protocol_text,
)
from finetune.analysis.significance import (
    EXAMPLE_SCORES,
    SCORES,
    PooledResult,
    Stratum,
    holm,
    stratified_test,
)
from finetune.errors import Problem, UsageError

CELL_FIELDS = ("model_type", "train_set", "language")


@dataclass(frozen=True)
class Condition:
    text: str  # as given: "model_type=ipa"
    values: dict[str, Any]


def parse_condition(text: str, flag: str) -> Condition:
    """``key=value[,key=value...]``; values are read as JSON when they parse (1e-4, 42, true)."""
    values: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise UsageError(problems=[Problem(flag, "", f"expected KEY=VALUE[,KEY=VALUE...], got {text!r}")])
        if key == REPLICA_KEY:
            raise UsageError(problems=[Problem(flag, "", f"{REPLICA_KEY!r} is a replica, not a condition: "
                                               "seeds are paired and pooled, never compared")])
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw.strip()
    return Condition(text, values)


def _matches(config: Configuration, cond: Condition) -> bool:
    fields = {"model_type": config.model_type, "train_set": config.train_set, "language": config.language}
    hyper = config.trial_hyperparameters  # the same for every trial of a configuration but the seed
    for key, want in cond.values.items():
        have = fields[key] if key in fields else hyper.get(key)
        if isinstance(want, (int, float)) and isinstance(have, (int, float)) and not isinstance(have, bool):
            if float(want) != float(have):
                return False
        elif have != want and str(have) != str(want):
            return False
    return True


@dataclass(frozen=True)
class CellComparison:
    cell: dict[str, str]  # the cell fields that are not condition keys
    a: BestCell
    b: BestCell
    seeds: list[Any]  # paired seeds
    result: PooledResult
    p_holm: float

    @property
    def label(self) -> str:
        return cell_label(self.cell)

    @property
    def cross_language(self) -> bool:
        return self.a.language not in self.a.train_set.split("+")


def cell_label(cell: dict[str, str]) -> str:
    parts = []
    if "model_type" in cell:
        parts.append(cell["model_type"])
    if "train_set" in cell:
        parts.append(f"train {cell['train_set']}")
    if "language" in cell:
        parts.append(f"eval {cell['language']}")
    return ", ".join(parts)


@dataclass
class Comparison:
    a: Condition
    b: Condition
    metric: str
    split: str
    protocol: str  # the selection protocol, in words
    cells: list[CellComparison]
    pooled: dict[str, PooledResult]  # "all cells", "cross-language cells", "in-language cells"
    untested: list[str] = field(default_factory=list)  # cells that could not be tested, and why

    def cell(self, **fields: str) -> CellComparison | None:
        for c in self.cells:
            if all(c.cell.get(k) == v for k, v in fields.items()):
                return c
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.text, "b": self.b.text, "metric": self.metric, "split": self.split,
            "selection": self.protocol,
            "cells": [{**c.cell, "seeds": c.seeds, "trials_a": c.a.trial_ids, "trials_b": c.b.trial_ids,
                       **c.result.to_dict(), "p_holm": c.p_holm} for c in self.cells],
            "pooled": {k: v.to_dict() for k, v in self.pooled.items()},
            "untested": self.untested,
        }


def _side(table: ResultsTable, cond: Condition, keys: list[str]) -> dict[tuple[str, ...], BestCell]:
    configs = [c for c in table.configurations if _matches(c, cond)]
    best, _ = choose(configs, table.metric, table.selection)
    return {tuple(getattr(cell, k) for k in keys): cell for cell in best}


def _seed_map(cell: BestCell) -> dict[str, str]:
    return {json.dumps(s, sort_keys=True): tid for s, tid in zip(cell.seeds, cell.trial_ids, strict=True)}


def compare_conditions(
    table: ResultsTable, a: Condition, b: Condition, *, split: str = "test", languages: list[str] | None = None,
    rounds: int = 10000, seed: int = 0, confidence: float = 0.95, allow_missing: bool = False,
) -> Comparison:
    """Condition A against B in every cell both have, and pooled over cells; reads predictions.

    Raises UsageError listing the trials without kept predictions (unless ``allow_missing``:
    then those cells are reported untested).
    """
    if table.metric not in SCORES + EXAMPLE_SCORES:
        raise UsageError(problems=[Problem("--metric", "", f"the test scores {', '.join(SCORES + EXAMPLE_SCORES)} "
                                           f"from predictions, not {table.metric!r}")])
    if set(a.values) != set(b.values):
        raise UsageError(problems=[Problem("--b", "", f"must set the same keys as --a ({', '.join(sorted(a.values))}), "
                                           f"got {', '.join(sorted(b.values))}")])
    known = set(CELL_FIELDS) | {k for r in table.rows for k in r.hyperparameters}
    unknown = sorted(set(a.values) - known)
    if unknown:
        raise UsageError(problems=[Problem("--a", "", f"unknown key(s) {', '.join(unknown)}: use model_type, "
                                           "train_set, language or a hyperparameter of the plan")])
    keys = [k for k in CELL_FIELDS if k not in a.values]
    side_a, side_b = _side(table, a, keys), _side(table, b, keys)
    if not side_a or not side_b:
        which = a if not side_a else b
        raise UsageError(problems=[Problem("--a" if which is a else "--b", "",
                                           f"no finished trials match {which.text!r} in {table.plan_dir}")])
    untested: list[str] = []
    for key in sorted(set(side_a) ^ set(side_b)):
        only = a if key in side_a else b
        untested.append(f"{cell_label(dict(zip(keys, key, strict=True)))}: only {only.text} has finished trials")
    pairs: list[tuple[dict[str, str], BestCell, BestCell, list[str]]] = []
    needed: list[tuple[str, str]] = []  # (trial id, language)
    for key in sorted(set(side_a) & set(side_b)):
        cell = dict(zip(keys, key, strict=True))
        ca, cb = side_a[key], side_b[key]
        if languages and ca.language not in languages:
            continue
        sa, sb = _seed_map(ca), _seed_map(cb)
        common = sorted(set(sa) & set(sb))
        if not common:
            untested.append(f"{cell_label(cell)}: no seed finished under both conditions")
            continue
        pairs.append((cell, ca, cb, common))
        needed += [(sa[s], ca.language) for s in common] + [(sb[s], cb.language) for s in common]
    loaded: dict[tuple[str, str], Predictions | None] = {
        (tid, lang): load_predictions(table.plan_dir, tid, lang, split, table.metric)
        for tid, lang in dict.fromkeys(needed)
    }
    missing: dict[str, list[str]] = {}
    for (tid, lang), p in loaded.items():
        if p is None:
            missing.setdefault(tid, []).append(lang)
    if missing and not allow_missing:
        raise missing_error(table.plan_dir, missing, split)

    tested: list[tuple[dict[str, str], BestCell, BestCell, list[Any], list[Stratum]]] = []
    for cell, ca, cb, common in pairs:
        sa, sb = _seed_map(ca), _seed_map(cb)
        strata = []
        lacking = [tid for s in common for tid in (sa[s], sb[s]) if loaded[(tid, ca.language)] is None]
        if lacking:
            untested.append(f"{cell_label(cell)}: no predictions kept by {', '.join(sorted(set(lacking)))}")
            continue
        for s in common:
            pa, pb = loaded[(sa[s], ca.language)], loaded[(sb[s], cb.language)]
            assert pa is not None and pb is not None
            if pa.labels.shape != pb.labels.shape or (pa.labels != pb.labels).any():
                what = "labels" if table.metric in SCORES else ("tokens" if table.metric in ("loss", "perplexity")
                                                                 else "examples")
                raise UsageError(problems=[Problem(str(pb.path), what, f"differ from those of {pa.path}: the "
                                                   "test needs the same examples in the same order")])
            digest = hashlib.sha256(pa.labels.tobytes()).hexdigest()[:16]
            strata.append(Stratum(pa.predicted, pb.predicted, pa.labels, f"{ca.language}/{split}/{digest}"))
        tested.append((cell, ca, cb, [json.loads(s) for s in common], strata))

    results = [stratified_test(st, metric=table.metric, rounds=rounds, seed=seed, confidence=confidence)
               for *_, st in tested]
    adjusted = holm([r.p_value for r in results])
    cells = [CellComparison(cell, ca, cb, seeds, r, p)
             for (cell, ca, cb, seeds, _), r, p in zip(tested, results, adjusted, strict=True)]
    pooled: dict[str, PooledResult] = {}
    if len(tested) > 1:
        groups = {"all cells": [True] * len(cells), "cross-language cells": [c.cross_language for c in cells],
                  "in-language cells": [not c.cross_language for c in cells]}
        for name, chosen in groups.items():
            if any(chosen) and (name == "all cells" or not all(chosen)):
                strata = [s for (*_, st), keep in zip(tested, chosen, strict=True) if keep for s in st]
                pooled[name] = stratified_test(strata, metric=table.metric, rounds=rounds, seed=seed,
                                               confidence=confidence)
    return Comparison(a, b, table.metric, split, protocol_text(table), cells, pooled, untested)


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def comparison_text(cmp: Comparison) -> str:
    """A markdown report: one row per cell, then the pooled results."""
    m, conf = cmp.metric, None
    lines = [f"## {cmp.a.text} vs {cmp.b.text}: {cmp.split} {m}", "",
             f"Configurations: {cmp.protocol}. Seeds paired (seed s of A against seed s of B on the same "
             "examples) and pooled by a stratified paired approximate randomization test; "
             "confidence intervals by bootstrap over examples.", ""]
    head = ["cell", "seeds", f"A {m}", f"B {m}", "A - B", "CI", "p", "p (Holm)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cmp.cells:
        r = c.result
        conf = r.confidence
        lines.append("| " + " | ".join([
            c.label, str(len(c.seeds)), f"{r.score_a:.4f}", f"{r.score_b:.4f}", f"{r.difference:+.4f}",
            f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]", _p(r.p_value), _p(c.p_holm)]) + " |")
    if not cmp.cells:
        lines.append("| " + " | ".join(["n/a"] * len(head)) + " |")
    if conf is not None:
        rounds = cmp.cells[0].result.rounds
        lines += ["", f"CI: {conf:.0%} bootstrap percentile interval of A - B; p: two-sided, "
                      f"{rounds} rounds; Holm: adjusted over {len(cmp.cells)} cells."]
        if cmp.cells[0].result.lower_is_better:
            lines.append(f"Lower {m} is better: a negative A - B favours A.")
        floor = len(cmp.cells) / (rounds + 1)
        if floor > 0.005:
            lines.append(f"Note: with {rounds} rounds no Holm-adjusted p can be below {floor:.2g}; "
                         "raise --rounds to resolve smaller ones.")
    for name, r in cmp.pooled.items():
        lines.append(f"Pooled over {name} ({r.strata} strata, {r.examples} examples): A {r.score_a:.4f}, "
                     f"B {r.score_b:.4f}, A - B {r.difference:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}], "
                     f"p {_p(r.p_value)}")
    if cmp.untested:
        lines += ["", "Not tested:", *(f"- {u}" for u in cmp.untested)]
    return "\n".join(lines) + "\n"
