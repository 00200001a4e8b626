"""The paired approximate randomization test: its statistic, its p-values, its inputs and CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune.analysis.significance import approximate_randomization, compare, scores
from finetune.errors import UsageError
from finetune.layout import logits_name

REPO = Path(__file__).resolve().parent.parent


def test_vectorised_macro_f1_matches_sklearn_row_by_row():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=60)
    preds = rng.integers(0, 6, size=(20, 60))  # class 5 never occurs in the labels
    preds[3] = 0  # one row predicting a single class
    got = scores(preds, labels, "macro_f1")
    want = [f1_score(labels, row, average="macro", zero_division=0) for row in preds]
    assert got == pytest.approx(want)
    assert scores(preds, labels, "accuracy") == pytest.approx((preds == labels).mean(1))


def _exact_p(a, b, y, metric):
    """All 2^n swaps: the p-value the randomization test estimates (without the +1)."""
    a, b, y = map(np.asarray, (a, b, y))
    observed = abs(scores(a, y, metric)[0] - scores(b, y, metric)[0])
    hits = 0
    swaps = list(itertools.product([False, True], repeat=len(y)))
    for swap in swaps:
        s = np.array(swap)
        d = abs(scores(np.where(s, b, a), y, metric)[0] - scores(np.where(s, a, b), y, metric)[0])
        hits += d >= observed - 1e-12
    return hits / len(swaps)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_estimates_the_exact_permutation_p_value(metric):
    y = [0, 1, 2, 0, 1, 2, 0, 1, 2, 1]
    a = [0, 1, 2, 0, 1, 2, 0, 0, 2, 1]
    b = [0, 2, 1, 0, 1, 0, 2, 1, 2, 2]
    r = approximate_randomization(a, b, y, metric=metric, rounds=20000, seed=3)
    assert r.p_value == pytest.approx(_exact_p(a, b, y, metric), abs=0.015)
    assert r.difference == pytest.approx(scores(np.array(a), np.array(y), metric)[0]
                                         - scores(np.array(b), np.array(y), metric)[0])


def test_identical_systems_give_p_one_and_a_clear_winner_a_tiny_p():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=200)
    noisy = np.where(rng.random(200) < 0.5, y, rng.integers(0, 7, size=200))
    assert approximate_randomization(noisy, noisy, y, rounds=500).p_value == 1.0
    r = approximate_randomization(y, noisy, y, rounds=2000, seed=1)
    assert r.p_value == pytest.approx(1 / 2001)  # no round reaches the observed difference
    assert r.score_a == 1.0 and r.difference > 0


def test_p_values_are_calibrated_under_the_null():
    """Two equally good systems: p < 0.05 in about 5% of experiments (not a fixed number)."""
    rng = np.random.default_rng(7)
    small = 0
    experiments = 150
    for i in range(experiments):
        y = rng.integers(0, 4, size=80)
        a = np.where(rng.random(80) < 0.6, y, rng.integers(0, 4, size=80))
        b = np.where(rng.random(80) < 0.6, y, rng.integers(0, 4, size=80))
        small += approximate_randomization(a, b, y, metric="accuracy", rounds=300, seed=i).p_value < 0.05
    assert small / experiments < 0.12


def test_same_seed_same_p_value():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=50)
    a, b = rng.integers(0, 3, size=50), rng.integers(0, 3, size=50)
    first = approximate_randomization(a, b, y, rounds=777, seed=5)
    assert approximate_randomization(a, b, y, rounds=777, seed=5) == first


# --- trials and files ------------------------------------------------------------------------------


def _trial(root: Path, trial_id: str, dumps: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> Path:
    trial = root / trial_id
    (trial / "logits").mkdir(parents=True)
    (trial / "config.json").write_text(json.dumps({"id": trial_id}))
    for (lang, split), (logits, labels) in dumps.items():
        np.savez(trial / "logits" / logits_name(trial_id, lang, split), logits=logits, labels=labels)
    return trial


@pytest.fixture
def two_trials(tmp_path):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 7, size=99)
    good = np.eye(7)[np.where(rng.random(99) < 0.8, y, 0)]
    bad = np.eye(7)[np.where(rng.random(99) < 0.3, y, 0)]
    a = _trial(tmp_path, "aaaa11112222", {("russian", "eval"): (good, y), ("polish", "eval"): (good, y)})
    b = _trial(tmp_path, "bbbb33334444", {("russian", "eval"): (bad, y), ("polish", "eval"): (bad, y)})
    return a, b


def test_compare_trial_directories(two_trials):
    a, b = two_trials
    r = compare(a, b, language="russian", rounds=1000)
    assert r.file_a.endswith("aaaa11112222-russian-eval.npz") and r.p_value < 0.01 and r.difference > 0
    # the same files given directly give the same answer
    assert compare(r.file_a, r.file_b, rounds=1000).p_value == r.p_value


def test_compare_explains_what_is_missing(two_trials, tmp_path):
    a, b = two_trials
    with pytest.raises(UsageError, match="choose one with --language"):
        compare(a, b)
    with pytest.raises(UsageError, match=r"TRIAL_A: .*found none"):
        compare(a, b, language="russian", split="test")
    other = _trial(tmp_path / "x", "cccc", {("russian", "eval"): (np.eye(7)[:5], np.arange(5))})
    with pytest.raises(UsageError, match="same examples in the same order"):
        compare(a, other, language="russian")


def test_cli_prints_p_value_and_exits_2_on_bad_input(two_trials):
    a, b = two_trials
    run = [sys.executable, "-m", "finetune", "significance", str(a), str(b)]
    done = subprocess.run([*run, "--language", "polish", "--rounds", "500", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["rounds"] == 500 and out["p_value"] == pytest.approx(1 / 501) and out["examples"] == 99
    done = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--language" in done.stderr and "Traceback" not in done.stderr
    help_text = subprocess.run([*run[:4], "--help"], cwd=REPO, capture_output=True, text=True, timeout=120).stdout
    assert "examples:" in help_text and "finetune significance" in help_text
