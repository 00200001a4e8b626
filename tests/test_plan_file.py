"""plan.json version 2 (finetune.login.plan_file): sets plus small trial lines, validated in bulk
with the same verdicts as the careful per-record walk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from submit_helpers import make_plan

from finetune import layout
from finetune.errors import ConfigError
from finetune.login import plan_file
from finetune.login.plan import load_plan, write_plan
from finetune.login.plan_file import PLAN_VERSION, Trial, dump


def _v2(root: Path, n: int = 3) -> dict:
    """A version 2 plan.json of ``n`` trials (make_plan writes version 1; write_plan turns it into 2)."""
    make_plan(root, n)
    write_plan(load_plan(root), root)
    data = json.loads(layout.plan_file(root).read_text())
    assert data["version"] == 2
    return data


def test_a_version_1_plan_is_read_and_written_again_as_version_2(tmp_path):
    ids = make_plan(tmp_path, 3)
    before = load_plan(tmp_path)
    assert before.version == 1
    write_plan(before, tmp_path)
    data = json.loads(layout.plan_file(tmp_path).read_text())
    assert data["version"] == PLAN_VERSION == 2
    assert [t["id"] for t in data["trials"]] == ids and all(set(t) == {"id", "set", "grid_point"} for t in data["trials"])
    after = load_plan(tmp_path)
    assert [t.record() for t in after.trials] == [t.record() for t in before.trials]


def test_trials_of_one_set_share_one_line_of_hyperparameters(tmp_path):
    base = {"learning_rate": 1e-4, "seed": 0, "batch_size": 8}
    trials = [Trial(f"{i:012x}", "normal", ["polish"], ["polish"], {**base, "seed": i}, "g", {"seed": i}, base=base)
              for i in range(50)]
    text = dump(PLAN_VERSION, [], {}, trials)
    data = json.loads(text)
    assert len(data["sets"]) == 1 and data["sets"][0]["hyperparameters"] == base
    assert text.count("learning_rate") == 1  # not once per trial
    out = tmp_path / "p"
    out.mkdir()
    layout.plan_file(out).write_text(text)
    loaded = load_plan(out)
    assert [t.hyperparameters for t in loaded.trials] == [t.hyperparameters for t in trials]
    assert {id(t.base) for t in loaded.trials} == {id(loaded.trials[0].base)}  # one dict for the set
    # trials made without a base (hyperparameters whole) share a set when the rest is the same
    lone = [Trial(f"{i:012x}", "normal", ["polish"], ["polish"], {**base, "seed": i}, "g", {"seed": i})
            for i in (98, 99)]
    sets = json.loads(dump(PLAN_VERSION, [], {}, [*trials, *lone]))["sets"]
    assert [s["hyperparameters"] for s in sets] == [base, {"learning_rate": 1e-4, "batch_size": 8}]


CASES = {
    "escape": (lambda d: d["trials"][0].update(id="../../evil"), "$.trials[0].id", "not a trial id"),
    "duplicate": (lambda d: d["trials"][1].update(id=d["trials"][0]["id"]), "$.trials[1].id", "appears twice"),
    "point value": (lambda d: d["trials"][0]["grid_point"].update(seed=2 ** 70), "$.trials[0].grid_point.seed", ""),
    # True == 1 in a Python set: the bulk check must still see the boolean among the integers
    "boolean seed": (lambda d: d["trials"][2]["grid_point"].update(seed=True), "$.trials[2].grid_point.seed",
                     "integer"),
    "set value": (lambda d: d["sets"][0]["hyperparameters"].update(learning_rate="fast"),
                  "$.sets[0].hyperparameters.learning_rate", "number"),
    "set field": (lambda d: d["sets"][0].pop("model_type"), "$.sets[0].model_type", "missing"),
    "set index": (lambda d: d["trials"][1].update(set=7), "$.trials[1].set", "not the index of a set"),
    "lineage": (lambda d: d["trials"][0].update(lineage="../x"), "$.trials[0].lineage", "not a trial id"),
    "not an object": (lambda d: d["trials"].__setitem__(1, ["a"]), "$.trials[1]", "an object"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_edits_of_a_version_2_plan_are_refused_naming_the_json_path(tmp_path, name, capsys):
    from finetune.cli import main

    edit, path, words = CASES[name]
    data = _v2(tmp_path / "p")
    data["trials"][1]["grid_point"]["seed"] = 1  # (the boolean case needs an integer 1 elsewhere)
    edit(data)
    plan = tmp_path / "p"
    layout.plan_file(plan).write_text(json.dumps(data))
    with pytest.raises(ConfigError) as e:
        load_plan(plan)
    shown = str(e.value) + "".join(f"{p.path}: {p.message}" for p in e.value.problems)
    assert path in shown and words in shown, shown
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["submit", str(plan), "--executor", "local", "--dry-run"]) == 2
    assert path in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_untouched_version_2_plan_passes_the_bulk_check(tmp_path):
    data = _v2(tmp_path / "p", 4)
    assert plan_file._records_look_right(data["trials"], len(data["sets"]))
    assert plan_file.record_problems("p", data["trials"], len(data["sets"])) == []


VALUES = [True, False, 0, 1, -1, 2, 1.0, 0.5, 0.0, -0.5, 1e23, 2 ** 70, 4294967295, 4294967296, math.inf, -math.inf,
          math.nan, "linear", "cosine", "x", "", None, [1], {"a": 1}, 1048576, 1048577]


def test_the_fast_scalar_check_never_passes_what_jsonschema_refuses():
    import jsonschema

    from finetune.login.schema import load_schema, surely_valid

    props = load_schema("config")["properties"]["hyperparameters"]["properties"]
    passed = 0
    for name, schema in props.items():
        validator = jsonschema.Draft202012Validator(schema)
        for value in VALUES:
            if surely_valid(schema, value):
                passed += 1
                assert not list(validator.iter_errors(value)), (name, value)
    assert passed > 40  # it does answer for the common cases
