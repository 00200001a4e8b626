"""The cross-language matrix: each language alone and their union, evaluated on every language."""

from __future__ import annotations

import pytest

from finetune.login.matrix import cells, language_matrix
from finetune.login.plan import build_plan


def test_two_languages_give_three_train_sets_and_six_cells():
    assert language_matrix(["russian", "polish"]) == [
        (["polish"], ["polish", "russian"]),
        (["russian"], ["polish", "russian"]),
        (["polish", "russian"], ["polish", "russian"]),
    ]
    assert sorted(cells(["russian", "polish"])) == sorted([
        (("polish",), "polish"), (("polish",), "russian"), (("russian",), "polish"), (("russian",), "russian"),
        (("polish", "russian"), "polish"), (("polish", "russian"), "russian")])


@pytest.mark.parametrize("n, train_sets", [(1, 1), (2, 3), (3, 4), (8, 9)])
def test_n_languages_give_n_plus_one_train_sets(n, train_sets):
    langs = [f"l{i}" for i in range(n)]
    matrix = language_matrix(langs)
    assert len(matrix) == train_sets
    assert all(evals == sorted(langs) for _, evals in matrix)
    assert len(cells(langs)) == train_sets * n


def test_no_languages():
    assert language_matrix([]) == []


def test_matrix_plan_counts(config_dir):
    files = [str(config_dir / "finetune-rus-pol.json"), str(config_dir / "finetune-rus-pol-topic.json")]
    plan = build_plan(files, matrix=True)
    assert plan.counts() == {"normal": 3, "ipa": 3}
    assert len(plan.trials) == 6
    three = build_plan(files, ["datasets.czech=sib200"], matrix=True)
    assert three.counts() == {"normal": 4, "ipa": 4}
    # a grid on top multiplies; its languages section is not used by the matrix
    grid = build_plan(files, matrix=True, grid_config=str(config_dir / "grid-search.json"), model_types=["ipa"])
    assert grid.counts() == {"ipa": 3 * 6}
    trained = {tuple(t.train_languages) for t in grid.trials}
    assert trained == {("polish",), ("russian",), ("polish", "russian")}


def test_the_grids_languages_are_not_used_by_the_matrix(config_dir, tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text('{"parameters": {"seed": [1, 2]}, "languages": {"train": "czech", "eval": "czech"}}')
    files = [str(config_dir / "finetune-rus-pol.json"), str(config_dir / "finetune-rus-pol-topic.json")]
    plan = build_plan(files, grid_config=str(grid), matrix=True)
    assert plan.counts() == {"normal": 6, "ipa": 6}
    assert {lang for t in plan.trials for lang in t.eval_languages} == {"polish", "russian"}
