"""Grid expansion: product, zip, exclude, fixed scalars, languages."""

from __future__ import annotations

import pytest

from finetune.login.grid import Grid, axes, count, excluded, expand, grid_problems, language_sets, parse_grid
from finetune.login.schema import hyperparameter_names


def grid(**data) -> Grid:
    return parse_grid(data, "g.json")


def test_product_of_lists_in_written_order_scalars_fixed():
    g = grid(parameters={"learning_rate": [1, 2], "seed": 7, "batch_size": [8, 16, 32]})
    assert g.fixed == {"seed": 7}
    assert expand(g) == [
        {"learning_rate": 1, "batch_size": 8}, {"learning_rate": 1, "batch_size": 16},
        {"learning_rate": 1, "batch_size": 32}, {"learning_rate": 2, "batch_size": 8},
        {"learning_rate": 2, "batch_size": 16}, {"learning_rate": 2, "batch_size": 32},
    ]
    assert count(g) == 6


def test_no_parameters_is_one_empty_point():
    assert expand(grid()) == [{}]
    assert expand(grid(parameters={"seed": 3})) == [{}]


def test_zip_groups_vary_together():
    g = grid(parameters={"learning_rate": [1, 2, 3], "batch_size": [8, 16], "warmup_ratio": [0.0, 0.1, 0.2]},
             zip=[["learning_rate", "warmup_ratio"]])
    assert [names for names, _ in axes(g)] == [("learning_rate", "warmup_ratio"), ("batch_size",)]
    points = expand(g)
    assert len(points) == 3 * 2 == count(g)
    assert {(p["learning_rate"], p["warmup_ratio"]) for p in points} == {(1, 0.0), (2, 0.1), (3, 0.2)}


@pytest.mark.parametrize("rules, model_type, kept", [
    ([], "normal", 6),
    ([{"batch_size": 16}], "normal", 4),
    ([{"batch_size": 16, "learning_rate": 1}], "normal", 5),
    ([{"batch_size": [8, 16], "learning_rate": 1}], "normal", 4),
    ([{"model_type": "ipa"}], "ipa", 0),
    ([{"model_type": "ipa"}], "normal", 6),
    ([{"model_type": "ipa", "learning_rate": 2}], "ipa", 3),
    ([{"learning_rate": 1.0}], "normal", 3),  # 1 and 1.0 are one value
    ([{"learning_rate": 1}, {"learning_rate": 2}], "normal", 0),
])
def test_exclude_rules(rules, model_type, kept):
    g = grid(parameters={"learning_rate": [1, 2], "batch_size": [8, 16, 32]}, exclude=rules)
    assert len([p for p in expand(g) if not excluded(p, model_type, g.exclude)]) == kept


def test_true_is_not_one():
    assert not excluded({"x": 1}, "normal", [{"x": True}])


@pytest.mark.parametrize("languages, expected", [
    ({}, (["polish", "russian"], ["polish", "russian"])),
    ({"train": "all", "eval": "all"}, (["polish", "russian"], ["polish", "russian"])),
    ({"train": "russian"}, (["russian"], ["polish", "russian"])),
    ({"train": "russian", "eval": "polish"}, (["russian"], ["polish"])),
    ({"train": ["russian", "polish"], "eval": ["russian"]}, (["polish", "russian"], ["russian"])),
])
def test_language_sets(languages, expected):
    assert language_sets(grid(languages=languages), ["russian", "polish"]) == expected


def test_grid_problems_are_collected():
    g = grid(parameters={"learning_rate": [0.1, -1], "sed": [1], "dropout": 0.5, "seed": [1, 2]},
             zip=[["seed", "dropout"]], exclude=[{"model": "ipa"}], languages={"train": ["russian", "czech"]})
    got = [f"{p.path}: {p.message}" for p in grid_problems(g, hyperparameter_names(), ["russian", "polish"])]
    assert got == [
        "$.parameters.learning_rate[1]: must be > 0 (got -1)",
        "$.parameters.sed: not a hyperparameter (did you mean seed?)",
        "$.zip[0][1]: 'dropout' is fixed (a scalar); only lists can be zipped",
        "$.exclude[0].model: exclude rules may name swept parameters or model_type only (did you mean model_type?)",
        "$.languages.train[1]: language 'czech' is not in the config's datasets",
    ]
