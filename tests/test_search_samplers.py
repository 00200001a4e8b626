"""The qmc sampler and the median and hyperband pruners in real (tiny) searches: local workers
running the count workload, whose made-up macro-F1 peaks at learning rate 1e-3 and rises with
the count (finetune.compute.workloads.made_up_score)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_helpers import count_sets, search_plan, study_trials  # noqa: E402

from finetune.login import search as S  # noqa: E402
from finetune.login.search_submit import start_search  # noqa: E402


def _run(tmp_path: Path, search: dict, parameters: dict, sets: list[str]) -> list:
    plan = search_plan(tmp_path, {"parameters": parameters, "search": search}, sets)
    start_search(plan, tmp_path / "search", executor="local")
    return study_trials(tmp_path / "search")


def _unit(value: float, low: float, high: float, log: bool = False) -> float:
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low)


def test_qmc_points_are_one_scrambled_sobol_sequence_from_the_first_trial_on(tmp_path):
    """8 trials from 2 workers at once: the first 8 points of one scrambled Sobol sequence (none
    random, none twice), so they form a (0, 3, 2)-net: each of the 8 slices of either axis, and
    each box of 1/2 x 1/4 or 1/4 x 1/2 of the unit square, holds exactly one point."""
    from scipy.stats import qmc

    trials = _run(tmp_path, {"sampler": "qmc", "trials": 8, "workers": 2, "seed": 7},
                  {"learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
                   "warmup_ratio": {"low": 0.0, "high": 0.5}},
                  count_sets(count_to=2, interval=2, sleep_s=0.0))
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    points = [(_unit(t.params["learning_rate"], 1e-5, 1e-1, log=True), _unit(t.params["warmup_ratio"], 0.0, 0.5))
              for t in trials]
    assert len(set(points)) == 8 and len({t.user_attrs["trial_id"] for t in trials}) == 8
    for bx, by in ((8, 1), (1, 8), (2, 4), (4, 2)):
        boxes = sorted((int(x * bx), int(y * by)) for x, y in points)
        assert boxes == sorted((i, j) for i in range(bx) for j in range(by)), (bx, by, points)
    sobol = qmc.Sobol(2, scramble=True, seed=7).random(8)
    assert sorted(map(tuple, sobol.round(9).tolist())) == sorted((round(x, 9), round(y, 9)) for x, y in points)


def test_the_median_pruner_waits_for_its_startup_trials_then_prunes_a_bad_trial_at_once(tmp_path):
    """startup_trials 2: a bad first trial runs to the end (nothing to compare with yet); once two
    trials have finished, a bad one stops at its first evaluation, below the median there, and a
    good one is not stopped."""
    trials = _run(tmp_path, {"sampler": "random", "trials": 4, "workers": 1, "pruner": "median", "startup_trials": 2,
                             "enqueue": [{"learning_rate": 1e-1}, {"learning_rate": 1e-3}, {"learning_rate": 3e-2},
                                         {"learning_rate": 5e-4}]},
                  {"learning_rate": {"low": 1e-5, "high": 1e-1, "log": True}}, count_sets(count_to=8, interval=2))
    assert [(t.params["learning_rate"], t.state.name) for t in trials] == [
        (1e-1, "COMPLETE"), (1e-3, "COMPLETE"), (3e-2, "PRUNED"), (5e-4, "COMPLETE")]
    assert list(trials[0].intermediate_values) == [2, 4, 6, 8]  # bad, but a startup trial
    assert list(trials[2].intermediate_values) == [2]  # stopped at the first evaluation
    median = (trials[0].intermediate_values[2] + trials[1].intermediate_values[2]) / 2
    assert trials[2].intermediate_values[2] < median < trials[3].intermediate_values[2]
    assert list(trials[3].intermediate_values) == [2, 4, 6, 8]


def test_hyperband_prunes_each_trial_at_the_first_rung_of_its_bracket(tmp_path):
    """count_to 18, an evaluation every 2 counts, reduction factor 3: once the first trial has
    finished (max_resource "auto" = 19), hyperband has 3 brackets whose first rungs are at steps
    2, 6 and 18. Three equally bad trials, each behind a good one of its bracket, stop at their
    own bracket's first rung: 6, 6 and 2."""
    good = [{"learning_rate": 1e-3}, {"learning_rate": 1.2e-3}, {"learning_rate": 9e-4}]
    bad = [{"learning_rate": 1e-1}, {"learning_rate": 1.1e-1}, {"learning_rate": 9e-2}]
    trials = _run(tmp_path, {"sampler": "random", "trials": 6, "workers": 1, "pruner": "hyperband",
                             "enqueue": good + bad},
                  {"learning_rate": {"low": 1e-5, "high": 2e-1, "log": True}}, count_sets(count_to=18, interval=2))
    spec = S.load_spec(tmp_path / "search")
    study = S.open_study(tmp_path / "search", spec)
    pruner = study.pruner
    assert not pruner.prune(study, trials[-1])  # a finished trial: this only sets the brackets up
    assert pruner._n_brackets == 3 and pruner._max_resource == 19 and pruner._min_resource == 2
    brackets = [pruner._get_bracket_id(study, t) for t in trials]
    assert brackets == [0, 1, 0, 1, 1, 0]  # crc32 of the study name and trial number (Optuna's)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"] * 3
    assert [t.last_step for t in trials] == [18, 18, 18, 6, 6, 2]
    for t, b in zip(trials[3:], brackets[3:], strict=True):
        assert t.last_step == spec["min_resource"] * spec["reduction_factor"] ** b  # the bracket's first rung
    assert list(trials[3].intermediate_values) == [2, 4, 6]  # bad at step 2 too, but its bracket starts at 6


def test_successive_halving_takes_its_first_rung_at_min_resource_when_given(tmp_path):
    """min_resource 4 with an evaluation every 2 counts: a bad trial after a good one is judged at
    step 4, not at its first evaluation (step 2), and stops there."""
    trials = _run(tmp_path, {"sampler": "random", "trials": 2, "workers": 1, "pruner": "successive-halving",
                             "min_resource": 4, "enqueue": [{"learning_rate": 1e-3}, {"learning_rate": 1e-1}]},
                  {"learning_rate": {"low": 1e-5, "high": 2e-1, "log": True}}, count_sets(count_to=8, interval=2))
    assert S.load_spec(tmp_path / "search")["min_resource"] == 4
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert list(trials[0].intermediate_values) == [2, 4, 6, 8]
    assert list(trials[1].intermediate_values) == [2, 4]  # bad at step 2 too, but the first rung is step 4
