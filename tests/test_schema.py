"""Validation: exact error text for bad layers, grids and databases; all problems at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune.errors import ConfigError
from finetune.login.plan import build_plan
from finetune.login.schema import SCHEMAS, did_you_mean, load_schema, schema_path, validate

PAIR = '{"checkpoints": {"normal": "n", "ipa": "i"}, "tokenizers": {"normal_prefix": "n", "ipa_prefix": "i"}}'
TASK = '{"task": "topic", "datasets": {"russian": "sib200", "polish": "sib200"}}'


@pytest.fixture
def workdir(tmp_path, monkeypatch, config_dir):
    """tmp/config/{default,language-database}.json copied from the shipped ones; cwd = tmp."""
    (tmp_path / "config").mkdir()
    for name in ("default.json", "language-database.json"):
        shutil.copy(config_dir / name, tmp_path / "config" / name)
    (tmp_path / "config" / "pair.json").write_text(PAIR)
    (tmp_path / "config" / "task.json").write_text(TASK)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def errors_of(files, overrides=(), **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build_plan(files, overrides, **kw)
    return str(e.value).splitlines()


CONFIG_CASES = [
    pytest.param('{"hyperparameters": {"learing_rate": 1e-4}}',
                 ["config/bad.json: $.hyperparameters.learing_rate: unknown key (did you mean learning_rate?)"],
                 id="unknown key with suggestion"),
    pytest.param('{"hyperparamters": {}}',
                 ["config/bad.json: $.hyperparamters: unknown key (did you mean hyperparameters?)"],
                 id="unknown top-level key"),
    pytest.param('{"hyperparameters": {"zzz": 1}}',
                 ["config/bad.json: $.hyperparameters.zzz: unknown key"], id="unknown key, nothing close"),
    pytest.param('{"hyperparameters": {"learning_rate": 0}}',
                 ["config/bad.json: $.hyperparameters.learning_rate: must be > 0 (got 0)"], id="learning_rate > 0"),
    pytest.param('{"hyperparameters": {"warmup_ratio": 1}}',
                 ["config/bad.json: $.hyperparameters.warmup_ratio: must be < 1 (got 1)"], id="warmup_ratio < 1"),
    pytest.param('{"hyperparameters": {"warmup_ratio": -0.1}}',
                 ["config/bad.json: $.hyperparameters.warmup_ratio: must be >= 0 (got -0.1)"], id="warmup_ratio >= 0"),
    pytest.param('{"hyperparameters": {"batch_size": 0}}',
                 ["config/bad.json: $.hyperparameters.batch_size: must be >= 1 (got 0)"], id="batch_size >= 1"),
    pytest.param('{"hyperparameters": {"epochs": 2.5}}',
                 ["config/bad.json: $.hyperparameters.epochs: must be an integer (got 2.5)"], id="epochs integer"),
    pytest.param('{"hyperparameters": {"weight_decay": -1}}',
                 ["config/bad.json: $.hyperparameters.weight_decay: must be >= 0 (got -1)"], id="weight_decay >= 0"),
    pytest.param('{"hyperparameters": {"batch_size": "32"}}',
                 ['config/bad.json: $.hyperparameters.batch_size: must be an integer (got "32")'], id="type"),
    pytest.param('{"hyperparameters": {"scheduler": "cosin"}}',
                 ['config/bad.json: $.hyperparameters.scheduler: must be one of linear, cosine, constant '
                  '(got "cosin") (did you mean cosine?)'], id="enum with suggestion"),
    pytest.param('{"training": {"strategy": "deepspeed"}}',
                 ['config/bad.json: $.training.strategy: must be one of auto, single, ddp, fsdp (got "deepspeed")'],
                 id="strategy enum"),
    pytest.param('{"slurm": {"time": "4h", "gpus": -1}}',
                 ['config/bad.json: $.slurm.gpus: must be >= 0 (got -1)',
                  'config/bad.json: $.slurm.time: must be a SLURM time such as 04:00:00, 90 or 1-12:00:00 (got "4h")'],
                 id="slurm"),
    pytest.param('{"datasets": {"klingon": "sib200", "polish": "sib2000"}}',
                 ["config/bad.json: $.datasets.klingon: language 'klingon' is not in the database "
                  "config/language-database.json",
                  "config/bad.json: $.datasets.polish: language 'polish' has no dataset 'sib2000' for task 'topic' "
                  "in config/language-database.json (did you mean sib200?)"],
                 id="datasets cross-checked with the database"),
    pytest.param('{"task": "topc"}',
                 ["config/bad.json: $.task: task 'topc' is not in the database config/language-database.json for "
                  "russian, polish (tasks: topic) (did you mean topic?)"],
                 id="task not in the database"),
    pytest.param('{"datasets": null}', ["config/bad.json: $.datasets: must be an object (got null)"],
                 id="datasets null"),
    pytest.param('{"checkpoints": {"ipa": null}}',
                 ["config/bad.json: $.checkpoints.ipa: not set, but model type 'ipa' is planned "
                  "(set it in the language-pair layer or drop the model type)"], id="checkpoint of a model type"),
    pytest.param('{"database": "nowhere.json"}',
                 ["config/bad.json: $.database: database file not found: config/nowhere.json"], id="database missing"),
]


@pytest.mark.parametrize("bad, expected", CONFIG_CASES)
def test_config_errors(workdir, bad, expected):
    (workdir / "config" / "bad.json").write_text(bad)
    assert errors_of(["config/pair.json", "config/task.json", "config/bad.json"]) == expected


def test_no_datasets_at_all(workdir):
    assert errors_of(["config/pair.json"]) == ["config/default.json: $.datasets: must not be empty"]


def test_set_overrides_are_named_as_such(workdir):
    assert errors_of(["config/pair.json", "config/task.json"], ["hyperparameters.dropout=2"]) == [
        "--set: $.hyperparameters.dropout: must be < 1 (got 2)"]


def test_the_shipped_default_fills_what_a_users_default_json_leaves_out(workdir):
    (workdir / "config" / "default.json").write_text('{"database": "language-database.json"}')
    plan = build_plan(["config/pair.json", "config/task.json"])
    assert plan.trials[0].hyperparameters["learning_rate"] == 5e-5  # from the shipped default.json


def test_missing_required_key_names_the_last_layer_of_its_object(workdir, tmp_path):
    from finetune.login.layers import load_config
    from finetune.login.schema import validate_config

    (workdir / "config" / "default.json").write_text('{"database": "language-database.json"}')
    layered = load_config(["config/pair.json", "config/task.json"], base=None)
    lines = [str(p) for p in validate_config(layered)]
    assert "config/task.json: $.hyperparameters: missing required key" in lines  # the root: last layer
    assert "config/pair.json: $.checkpoints.prefix: missing required key" in lines


def test_all_problems_at_once_across_config_grid_and_flags(workdir):
    (workdir / "config" / "bad.json").write_text('{"hyperparameters": {"learing_rate": 1, "dropout": 1}}')
    (workdir / "grid.json").write_text(
        '{"parameters": {"learning_rate": [0, 1e-4], "batchsize": [1, 2], "seed": [1, 1]},'
        ' "languages": {"train": "rusian", "eval": ["polish", "czech"]},'
        ' "zip": [["learning_rate", "seed", "dropout"]], "exclude": [{"weight_decay": 0}]}')
    lines = errors_of(["config/pair.json", "config/task.json", "config/bad.json"], grid_config="grid.json",
                      model_types=["normal", "ipx"])
    assert lines == [
        "--model-type: unknown model type 'ipx' (choose normal or ipa) (did you mean ipa?)",
        "config/bad.json: $.hyperparameters.dropout: must be < 1 (got 1)",
        "config/bad.json: $.hyperparameters.learing_rate: unknown key (did you mean learning_rate?)",
        "grid.json: $.exclude[0].weight_decay: exclude rules may name swept parameters or model_type only",
        "grid.json: $.languages.eval[1]: language 'czech' is not in the config's datasets",
        "grid.json: $.languages.train: language 'rusian' is not in the config's datasets (did you mean russian?)",
        "grid.json: $.parameters.batchsize: not a hyperparameter (did you mean batch_size?)",
        "grid.json: $.parameters.learning_rate[0]: must be > 0 (got 0)",
        "grid.json: $.parameters.seed: has duplicate values: [1, 1]",
        "grid.json: $.zip[0][2]: 'dropout' is not in parameters",
    ]


def test_grid_schema_errors(workdir):
    (workdir / "grid.json").write_text('{"parameter": {}, "parameters": {"seed": []}, "zip": [["seed"]], '
                                       '"languages": {"train": ""}}')
    assert errors_of(["config/pair.json", "config/task.json"], grid_config="grid.json") == [
        "grid.json: $.languages.train: must not be empty",
        "grid.json: $.parameter: unknown key (did you mean parameters?)",
        "grid.json: $.parameters.seed: must not be empty",
        "grid.json: $.zip[0]: needs at least 2 items (got 1)",
    ]


def test_zip_lengths_must_agree(workdir):
    (workdir / "grid.json").write_text('{"parameters": {"seed": [1, 2], "learning_rate": [1e-4, 2e-4, 3e-4], '
                                       '"dropout": 0.0}, "zip": [["seed", "learning_rate"], ["dropout", "seed"]]}')
    assert errors_of(["config/pair.json", "config/task.json"], grid_config="grid.json") == [
        "grid.json: $.zip[0]: zipped lists differ in length (seed: 2, learning_rate: 3)",
        "grid.json: $.zip[1][0]: 'dropout' is fixed (a scalar); only lists can be zipped",
        "grid.json: $.zip[1][1]: 'seed' is already in zip group 0",
    ]


def test_grid_syntax_error_names_file_line_and_column(workdir):
    (workdir / "grid.json").write_text('{\n  "parameters": {"seed": [1, 2,,]}\n}')
    assert errors_of(["config/pair.json", "config/task.json"], grid_config="grid.json") == [
        'grid.json: invalid JSON: line 2, column 32: Unexpected ","']


def test_classes_must_agree_across_the_languages_of_a_trial(workdir):
    db = json.loads((workdir / "config" / "language-database.json").read_text())
    db["polish"]["topic"]["sib200"]["classes"] = 5
    db["polish"]["topic"]["sib200"]["labels"] = db["polish"]["topic"]["sib200"]["labels"][:5]
    (workdir / "config" / "language-database.json").write_text(json.dumps(db))
    assert errors_of(["config/pair.json", "config/task.json"]) == [
        "config/task.json: $.datasets: classes differ across the languages of one trial (polish 5, russian 7)"]
    # training and evaluating on Russian alone is fine
    (workdir / "grid.json").write_text('{"languages": {"train": "russian", "eval": "russian"}}')
    assert len(build_plan(["config/pair.json", "config/task.json"], grid_config="grid.json").trials) == 2


DATABASE_CASES = [
    pytest.param({"russian": {"topic": {}}},
                 ["$.russian.topic: must not be empty"], id="espeak is optional (derived from the name)"),
    pytest.param({"russian": {"espeak": "ru", "topic": {"x": {"dataset": "d", "train_features": [], "eval_feature": "c",
                                                              "splits": {"train": "t"}, "task_type": "regression"}}}},
                 ['$.russian.topic.x.splits.eval: missing required key',
                  '$.russian.topic.x.task_type: must be one of classification, question-answering, causal-lm (got "regression")',
                  "$.russian.topic.x.train_features: must not be empty"], id="entry"),
    pytest.param({"russian": {"espeak": "ru", "topic": {"x": {"dataset": "d", "train_features": ["t"],
                                                              "eval_feature": "c", "splits": {"train": "t", "eval": "e"},
                                                              "task_type": "classification", "filter_lenght": True}}}},
                 ["$.russian.topic.x.classes: missing required key",
                  "$.russian.topic.x.filter_lenght: unknown key (did you mean filter_length?)"],
                 id="classification needs classes"),
]


@pytest.mark.parametrize("data, expected", DATABASE_CASES)
def test_database_schema(data, expected):
    assert [f"{p.path}: {p.message}" for p in validate("database", data, "db.json")] == expected


def test_database_labels_must_match_classes(tmp_path):
    from finetune.login.database import load_database

    entry = {"dataset": "d", "train_features": ["t"], "eval_feature": "c", "splits": {"train": "t", "eval": "e"},
             "task_type": "classification", "classes": 3, "labels": ["a", "b", "b"]}
    (tmp_path / "db.json").write_text(json.dumps({"x": {"espeak": "ru", "topic": {"d": entry}}}))
    with pytest.raises(ConfigError) as e:
        load_database(tmp_path / "db.json", name="db.json")
    assert str(e.value).splitlines() == ["db.json: $.x.topic.d.labels: has duplicate labels"]
    entry["labels"] = ["a", "b"]
    (tmp_path / "db.json").write_text(json.dumps({"x": {"espeak": "ru", "topic": {"d": entry}}}))
    with pytest.raises(ConfigError) as e:
        load_database(tmp_path / "db.json", name="db.json")
    assert str(e.value).splitlines() == ["db.json: $.x.topic.d.labels: has 2 labels but classes is 3"]


def test_did_you_mean():
    assert did_you_mean("learing_rate", ["learning_rate", "seed"]) == " (did you mean learning_rate?)"
    assert did_you_mean("qqq", ["learning_rate"]) == ""


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_shipped_schemas_are_valid_draft_2020_12(kind):
    import jsonschema

    schema = load_schema(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema_path(kind).parent == Path(__import__("finetune").__file__).parent / "login" / "schemas"


def test_every_hyperparameter_in_the_architecture_is_in_the_schema():
    hp = load_schema("config")["properties"]["hyperparameters"]["properties"]
    assert sorted(hp) == sorted(["learning_rate", "batch_size", "micro_batch_size", "epochs", "max_steps",
                                 "warmup_ratio", "scheduler", "weight_decay", "gradient_clipping", "seed", "dropout",
                                 "max_answer_length", "top_k", "doc_stride",
                                 "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_4bit"])
    training = load_schema("config")["properties"]["training"]["properties"]
    for key in ("strategy", "precision", "compile", "eval_interval", "checkpoint_interval", "metric", "device",
                "num_workers", "workload", "count_to", "count_sleep_s"):
        assert key in training


def test_batch_size_must_be_a_multiple_of_micro_batch_size(workdir):
    assert errors_of(["config/pair.json", "config/task.json"], ["hyperparameters.micro_batch_size=5"]) == [
        "--set: $.hyperparameters.micro_batch_size: batch_size 32 is not a multiple of micro_batch_size 5"]
    (workdir / "grid.json").write_text('{"parameters": {"micro_batch_size": [4, 6], "batch_size": [8, 12]}}')
    assert errors_of(["config/pair.json", "config/task.json"], grid_config="grid.json") == [
        "grid.json: $.hyperparameters.micro_batch_size: batch_size 8 is not a multiple of micro_batch_size 6"]


def test_a_task_some_languages_lack_is_named_per_language(workdir):
    db = json.loads((workdir / "config" / "language-database.json").read_text())
    db["russian"]["sentiment"] = db["russian"]["topic"]
    (workdir / "config" / "language-database.json").write_text(json.dumps(db))
    assert errors_of(["config/pair.json", "config/task.json"], ["task=sentiment"]) == [
        "config/task.json: $.datasets.polish: language 'polish' has no task 'sentiment' in "
        "config/language-database.json"]
