"""Paired approximate randomization test between two systems scored on the same examples.

Under the null hypothesis the two systems are interchangeable, so swapping their predictions on
any example is as likely as not. Each round swaps every pair with probability 1/2 and recomputes
the difference of the metric; the p-value is the share of rounds whose absolute difference is at
least the observed one (with the usual +1 correction, Noreen 1989; Riezler and Maxwell 2005).

Inputs are the logits files the trainer dumps (``--dump-logits``):
``<trial-id>-<language>-<split>.npz`` with arrays ``logits`` and ``labels``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.analysis.predictions import load_logits
from finetune.errors import Problem, UsageError

__all__ = ["approximate_randomization", "compare", "load_logits", "scores", "statistic", "stratified_test"]

SCORES = ("accuracy", "macro_f1")
# from per-example score dumps (question answering: exact_match and f1 per question; causal LM:
# loss_sum and tokens per packed block, the statistic being the token-weighted mean loss, on
# which perplexity, its exponential, is tested too; lower is better for both)
EXAMPLE_SCORES = ("exact_match", "f1", "loss", "perplexity")


@dataclass(frozen=True)
class SignificanceResult:
    metric: str
    score_a: float
    score_b: float
    difference: float  # score_a - score_b
    p_value: float
    rounds: int
    examples: int
    file_a: str = ""
    file_b: str = ""
    lower_is_better: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def better(self) -> str:
        """'a', 'b' or 'tie': which side scored better, whatever the metric's direction."""
        if self.difference == 0:
            return "tie"
        return "a" if (self.difference < 0) == self.lower_is_better else "b"


def scores(preds: Any, labels: Any, metric: str) -> Any:
    """The metric of each row of ``preds`` (rounds, n) against ``labels`` (n,), vectorised.

    ``labels`` may also be (rounds, n), one row per row of ``preds`` (bootstrap resamples).
    ``macro_f1`` matches scikit-learn's ``f1_score(average="macro", zero_division=0)``: the mean
    over the classes that occur in that row's labels or predictions.
    """
    import numpy as np

    preds = np.atleast_2d(preds)
    labels = np.atleast_2d(labels)  # (1, n), or (rounds, n) for bootstrap resamples
    if metric == "accuracy":
        return (preds == labels).mean(axis=1)
    if metric != "macro_f1":
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(SCORES)}")
    classes = np.union1d(np.unique(labels), np.unique(preds))
    total = np.zeros(preds.shape[0])
    present = np.zeros(preds.shape[0])
    for c in classes:
        is_pred = preds == c
        is_true = labels == c
        tp = (is_pred & is_true).sum(axis=1)
        denom = is_pred.sum(axis=1) + is_true.sum(axis=1)
        total += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        present += denom > 0
    return total / np.maximum(present, 1)


def approximate_randomization(
    preds_a: Any, preds_b: Any, labels: Any, *, metric: str = "macro_f1", rounds: int = 10000, seed: int = 0,
    chunk: int = 1000,
) -> SignificanceResult:
    """Two-sided paired approximate randomization test of ``metric(a) - metric(b)``."""
    import numpy as np

    a, b, y = (np.asarray(x, dtype=np.int64) for x in (preds_a, preds_b, labels))
    if not (a.shape == b.shape == y.shape) or a.ndim != 1:
        raise ValueError(f"predictions {a.shape}, {b.shape} and labels {y.shape} must be equal 1-d shapes")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    score_a, score_b = float(scores(a, y, metric)[0]), float(scores(b, y, metric)[0])
    observed = abs(score_a - score_b)
    rng = np.random.default_rng(seed)
    at_least = 0
    done = 0
    while done < rounds:
        r = min(chunk, rounds - done)
        swap = rng.random((r, y.size)) < 0.5
        sa = scores(np.where(swap, b, a), y, metric)
        sb = scores(np.where(swap, a, b), y, metric)
        # a tiny slack so that float noise does not turn an equal difference into a smaller one
        at_least += int((np.abs(sa - sb) >= observed - 1e-12).sum())
        done += r
    return SignificanceResult(
        metric=metric, score_a=score_a, score_b=score_b, difference=score_a - score_b,
        p_value=(at_least + 1) / (rounds + 1), rounds=rounds, examples=int(y.size),
    )


def find_logits(where: str | Path, *, language: str | None, split: str, flag: str) -> Path:
    """A dump file given directly, or the one of ``language``/``split`` in a trial directory."""
    where = Path(where)
    if where.is_file():
        return where
    if not where.is_dir():
        raise UsageError(problems=[Problem(flag, "", f"{where} is neither a trial directory nor a logits file")])
    folder = layout.logits_dir(where) if layout.logits_dir(where).is_dir() else where
    found = sorted(folder.glob(layout.logits_glob(_trial_id(where), language, split)))
    if len(found) != 1:
        what = f"language {language!r}, split {split!r}" if language else f"split {split!r}"
        detail = "none" if not found else ", ".join(p.name for p in found)
        hint = "; choose one with --language" if len(found) > 1 and not language else ""
        raise UsageError(
            problems=[Problem(flag, "", f"expected one logits dump for {what} in {folder} "
                              f"(written by --dump-logits), found {detail}{hint}")]
        )
    return found[0]


def _trial_id(trial_dir: Path) -> str | None:
    import json

    try:
        return str(json.loads(layout.config_file(trial_dir).read_text(encoding="utf-8"))["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compare(
    a: str | Path, b: str | Path, *, language: str | None = None, split: str = "eval", metric: str = "macro_f1",
    rounds: int = 10000, seed: int = 0,
) -> SignificanceResult:
    """Test two trials (directories or dump files) on the same split of the same language."""
    file_a = find_logits(a, language=language, split=split, flag="TRIAL_A")
    file_b = find_logits(b, language=language, split=split, flag="TRIAL_B")
    if metric in EXAMPLE_SCORES:
        return _compare_example_scores(file_a, file_b, metric=metric, rounds=rounds, seed=seed)
    logits_a, labels_a = load_logits(file_a)
    logits_b, labels_b = load_logits(file_b)
    if labels_a.shape != labels_b.shape or (labels_a != labels_b).any():
        raise UsageError(
            problems=[Problem(str(file_b), "labels", f"differ from those of {file_a}: the test needs the same "
                              "examples in the same order")]
        )
    result = approximate_randomization(
        logits_a.argmax(axis=1), logits_b.argmax(axis=1), labels_a, metric=metric, rounds=rounds, seed=seed
    )
    return SignificanceResult(**{**result.to_dict(), "file_a": str(file_a), "file_b": str(file_b)})


def paired_mean_randomization(
    values_a: Any, values_b: Any, *, weights: Any = None, metric: str = "f1", lower_is_better: bool = False,
    rounds: int = 10000, seed: int = 0, chunk: int = 1000,
) -> SignificanceResult:
    """The same test for a metric that is a (weighted) mean of per-example values.

    ``values`` are per-example scores (exact match, F1) or, with ``weights`` = token counts,
    per-block loss sums, so the statistic is sum(values) / sum(weights).
    """
    import numpy as np

    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)
    if not (a.shape == b.shape == w.shape) or a.ndim != 1 or a.size == 0:
        raise ValueError(f"per-example values {a.shape}, {b.shape} and weights {w.shape} must be equal 1-d shapes")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    total = w.sum()
    score_a, score_b = float(a.sum() / total), float(b.sum() / total)
    observed = abs(score_a - score_b)
    rng = np.random.default_rng(seed)
    at_least = done = 0
    while done < rounds:
        r = min(chunk, rounds - done)
        swap = rng.random((r, a.size)) < 0.5
        diff = (np.where(swap, b, a).sum(axis=1) - np.where(swap, a, b).sum(axis=1)) / total
        at_least += int((np.abs(diff) >= observed - 1e-12).sum())
        done += r
    return SignificanceResult(
        metric=metric, score_a=score_a, score_b=score_b, difference=score_a - score_b,
        p_value=(at_least + 1) / (rounds + 1), rounds=rounds, examples=int(a.size), lower_is_better=lower_is_better,
    )


def load_dump(path: str | Path) -> dict[str, Any]:
    """Every array of a dump file; errors name the file."""
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise UsageError(problems=[Problem(str(path), "", f"not a dump file (.npz): {e}")]) from None


def _compare_example_scores(file_a: Path, file_b: Path, *, metric: str, rounds: int, seed: int) -> SignificanceResult:
    """QA (exact_match, f1 per question) or causal-LM (loss_sum, tokens per block) dumps."""
    from finetune.login.tasks import lower_is_better

    dumps = [load_dump(file_a), load_dump(file_b)]
    key = "loss_sum" if metric in ("loss", "perplexity") else metric
    for f, d in zip((file_a, file_b), dumps, strict=True):
        if key not in d:
            raise UsageError(problems=[Problem(str(f), key, f"no per-example {key!r} in this dump "
                                               f"(has: {', '.join(sorted(d))}); is it a trial of the right task type?")])
    weights = dumps[0].get("tokens") if key == "loss_sum" else None
    if weights is not None and ("tokens" not in dumps[1] or dumps[1]["tokens"].shape != weights.shape
                                or (dumps[1]["tokens"] != weights).any()):
        raise UsageError(problems=[Problem(str(file_b), "tokens", f"differ from those of {file_a}: the test needs "
                                           "the same examples in the same order")])
    if dumps[0][key].shape != dumps[1][key].shape:
        raise UsageError(problems=[Problem(str(file_b), key, f"has {dumps[1][key].size} examples, {file_a} has "
                                           f"{dumps[0][key].size}: the test needs the same examples")])
    result = paired_mean_randomization(dumps[0][key], dumps[1][key], weights=weights, metric=metric,
                                       lower_is_better=lower_is_better(metric), rounds=rounds, seed=seed)
    return SignificanceResult(**{**result.to_dict(), "file_a": str(file_a), "file_b": str(file_b)})


# --- pooled over strata (seeds, cells) ------------------------------------------------------------


@dataclass(frozen=True)
class Stratum:
    """One paired comparison on one example set: e.g. seed 2 of both conditions on the Czech test split.

    Classification (SCORES): predicted labels and the gold labels. Per-example scores
    (EXAMPLE_SCORES): ``preds_a``/``preds_b`` are each example's value (exact match or F1 per
    question; the summed token loss per block) and ``labels`` its weight (1 per question; the
    block's token count), the statistic being sum(values) / sum(weights), and for perplexity
    its exponential."""

    preds_a: Any  # (n,) predicted labels (or per-example values) of condition A
    preds_b: Any  # (n,) of condition B, same examples, same order
    labels: Any  # (n,) gold labels (or per-example weights)
    examples: str  # strata with the same example set share the bootstrap's resampled indices


@dataclass(frozen=True)
class PooledResult:
    metric: str
    score_a: float  # mean over strata
    score_b: float
    difference: float  # score_a - score_b, mean over strata
    ci_low: float  # bootstrap percentile interval of the difference
    ci_high: float
    confidence: float
    p_value: float  # two-sided, stratified paired approximate randomization
    rounds: int
    strata: int
    examples: int  # examples summed over strata
    lower_is_better: bool = False  # loss and perplexity: a negative difference favours A

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def statistic(values: Any, reference: Any, metric: str) -> Any:
    """The metric of each row of ``values`` (rounds, n): a classification score against the gold
    labels ``reference`` (``scores``), or for EXAMPLE_SCORES the weighted mean
    sum(values) / sum(weights) with ``reference`` the weights (exp of it for perplexity).
    ``reference`` may be (n,) or (rounds, n)."""
    import numpy as np

    if metric in SCORES:
        return scores(values, reference, metric)
    if metric not in EXAMPLE_SCORES:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(SCORES + EXAMPLE_SCORES)}")
    v, w = np.atleast_2d(values), np.atleast_2d(reference)
    mean = v.sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    return np.exp(mean) if metric == "perplexity" else mean


def _chunk(n: int) -> int:
    """Rounds per vectorised batch: about two million cells per array."""
    return max(1, min(1000, 2_000_000 // max(1, n)))


def stratified_test(
    strata: list[Stratum], *, metric: str = "macro_f1", rounds: int = 10000, seed: int = 0,
    confidence: float = 0.95,
) -> PooledResult:
    """Paired test of A against B pooled over strata, with a bootstrap confidence interval.

    The statistic is the mean over strata of ``metric(A) - metric(B)`` (each stratum scored on
    its own, e.g. macro-F1 per seed). Randomization: under the null hypothesis A and B are
    interchangeable on every example, so each round swaps each example's pair with probability
    1/2 *within its stratum*; p is the share of rounds at least as extreme as observed (+1
    correction). Bootstrap: each round resamples the examples of every example set with
    replacement (the same indices for every stratum on that set: seeds see the same examples)
    and recomputes the statistic; the interval is its percentiles.
    """
    import numpy as np

    if not strata:
        raise ValueError("no strata to test")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    if metric not in SCORES + EXAMPLE_SCORES:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(SCORES + EXAMPLE_SCORES)}")
    dtype = np.int64 if metric in SCORES else np.float64
    arrays = []
    for i, st in enumerate(strata):
        a, b, y = (np.asarray(x, dtype=dtype) for x in (st.preds_a, st.preds_b, st.labels))
        if not (a.shape == b.shape == y.shape) or a.ndim != 1 or y.size == 0:
            raise ValueError(f"stratum {i}: predictions {a.shape}, {b.shape} and labels {y.shape} "
                             "must be equal non-empty 1-d shapes")
        arrays.append((a, b, y, st.examples))
    score_a = np.array([statistic(a, y, metric)[0] for a, _, y, _ in arrays])
    score_b = np.array([statistic(b, y, metric)[0] for _, b, y, _ in arrays])
    observed = float((score_a - score_b).mean())
    rng = np.random.default_rng(seed)

    null = np.zeros(rounds)
    for a, b, y, _ in arrays:
        done = 0
        while done < rounds:
            r = min(_chunk(y.size), rounds - done)
            swap = rng.random((r, y.size)) < 0.5
            null[done:done + r] += (statistic(np.where(swap, b, a), y, metric)
                                    - statistic(np.where(swap, a, b), y, metric))
            done += r
    null /= len(arrays)
    # a tiny slack so that float noise does not turn an equal difference into a smaller one
    p_value = (int((np.abs(null) >= abs(observed) - 1e-12).sum()) + 1) / (rounds + 1)

    boot = np.zeros(rounds)
    by_set: dict[str, list[tuple[Any, Any, Any]]] = {}
    for a, b, y, key in arrays:
        by_set.setdefault(key, []).append((a, b, y))
    for key, members in by_set.items():
        n = members[0][2].size
        if any(y.size != n for _, _, y in members):
            raise ValueError(f"example set {key!r}: strata of different sizes cannot share resampled indices")
        done = 0
        while done < rounds:
            r = min(_chunk(n), rounds - done)
            idx = rng.integers(0, n, size=(r, n))
            for a, b, y in members:
                yy = y[idx]
                boot[done:done + r] += statistic(a[idx], yy, metric) - statistic(b[idx], yy, metric)
            done += r
    boot /= len(arrays)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return PooledResult(
        metric=metric, score_a=float(score_a.mean()), score_b=float(score_b.mean()), difference=observed,
        ci_low=float(low), ci_high=float(high), confidence=confidence, p_value=p_value, rounds=rounds,
        strata=len(arrays), examples=int(sum(y.size for _, _, y, _ in arrays)),
        lower_is_better=metric in ("loss", "perplexity"),
    )


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order): family-wise error over many cells."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    m = len(p_values)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
