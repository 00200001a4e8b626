"""One validation source: the trial schema (which reuses the config schema's sections) is what the
planner, submit and the trainer check, and config/default.json is the only place a default lives.

These tests would have caught the old disagreements: the schema wanted ``epochs`` an integer >= 1
while the trainer accepted a float or null, and the trainer's own defaults (warmup 0.0, weight
decay 0.0, dropout 0.0, no eval interval) differed from default.json's.
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from pathlib import Path

import pytest
from submit_helpers import make_plan
from test_trainer import DEFAULTS, make_trial, run_in_process, settings_config

from finetune.compute.training.settings import DERIVED, Settings, settings_from_config
from finetune.errors import ConfigError
from finetune.login.expand import LORA_KEYS
from finetune.login.schema import field_error, load_schema, validate_hyperparameter, validate_trial
from finetune.login.submit import submit

CONFIG = load_schema("config")["properties"]
SECTIONS = ("hyperparameters", "training")
# trial.py's dispatch and the count stand-in's options (finetune.compute.workloads)
NOT_THE_TRAINERS = {"workload"} | {k for k in CONFIG["training"]["properties"] if k.startswith("count_")}
RESOLVED = {"micro_batch_size": "int"}  # null in the config means batch_size / world size in Settings
# keys the planner drops from trials that do not use them, so a frozen trial may lack them: those of one
# task type ("x-task-types"; that task reads them) and the LoRA keys (absent = full fine-tuning)
TASK_SPECIFIC = {key for section in SECTIONS for key, prop in CONFIG[section]["properties"].items()
                 if "x-task-types" in prop} | set(LORA_KEYS)
KEYS = [(section, key) for section in SECTIONS for key in CONFIG[section]["properties"] if key not in TASK_SPECIFIC]


@pytest.mark.parametrize("section", SECTIONS)
def test_every_key_is_required_and_has_its_default_in_default_json(section):
    props = CONFIG[section]["properties"]
    assert sorted(CONFIG[section]["required"]) == sorted(set(props) - TASK_SPECIFIC)
    assert sorted(DEFAULTS[section]) == sorted(props)


def test_the_trial_schema_reuses_the_config_schema_sections():
    trial = load_schema("trial")["properties"]
    for section in (*SECTIONS, "slurm", "wandb", "data"):
        assert trial[section]["$ref"] == f"config.schema.json#/properties/{section}"
        assert set(trial[section]) <= {"$ref", "description"}


def _python_type(prop: dict) -> str:
    if "enum" in prop:
        return "str"
    types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    names = {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "null": "None"}
    return " | ".join(names[t] for t in types)


def test_settings_read_exactly_the_schema_keys_with_the_schema_types():
    hints = typing.get_type_hints(Settings)
    read = {f.name for f in fields(Settings)} - set(DERIVED)
    keys = {key for _section, key in KEYS} - NOT_THE_TRAINERS
    assert read == keys
    for section, key in KEYS:
        if key in read:
            want = RESOLVED.get(key) or _python_type(CONFIG[section]["properties"][key])
            got = str(hints[key]).replace("<class '", "").replace("'>", "").replace("NoneType", "None")
            assert got == want, (section, key)


@pytest.mark.parametrize(("section", "key"), KEYS)
def test_the_trainer_refuses_a_trial_config_missing_a_key(section, key):
    cfg = settings_config({})
    del cfg[section][key]
    with pytest.raises(ConfigError) as err:
        settings_from_config(cfg, file="trials/x/config.json")
    assert [(p.file, p.path, p.message) for p in err.value.problems] == [
        ("trials/x/config.json", f"$.{section}.{key}", "missing required key")]


def test_the_trainer_settings_of_default_json_are_default_json():
    """No default of the trainer's own: every value it reads is the trial config's."""
    s = settings_from_config(settings_config(dict(DEFAULTS["hyperparameters"]), dict(DEFAULTS["training"])))
    for section, key in KEYS:
        value = DEFAULTS[section][key]
        if key in NOT_THE_TRAINERS or key == "strategy" or (key == "micro_batch_size" and value is None):
            continue
        assert getattr(s, key) == value, key


# values around every rule: the planner (grid values) and the trainer must accept the same ones
PROBES = [None, True, False, -1, 0, 1, 2, 1.5, 0.5, 1e-4, 64, "linear", "cosine", "step", "x"]


@pytest.mark.parametrize("key", list(CONFIG["hyperparameters"]["properties"]))
def test_the_planner_and_the_trainer_accept_the_same_hyperparameter_values(key):
    for value in PROBES:
        planner_ok = not validate_hyperparameter(key, value)
        hp = {key: value}
        if key in ("batch_size", "micro_batch_size"):  # keep the batch split valid: that rule is the trainer's
            hp = {"batch_size": 64, "micro_batch_size": None, key: value}
        try:
            settings_from_config(settings_config(hp))
            trainer_ok = True
        except ConfigError:
            trainer_ok = False
        assert planner_ok == trainer_ok, (key, value)


@pytest.mark.parametrize("epochs", [1.5, None, 0])
def test_fractional_null_or_zero_epochs_are_refused_everywhere(epochs):
    assert validate_hyperparameter("epochs", epochs)
    with pytest.raises(ConfigError, match=r"\$\.hyperparameters\.epochs"):
        settings_from_config(settings_config({"epochs": epochs, "max_steps": 5}))


def test_a_trial_config_missing_a_key_is_a_bad_input_of_the_trainer(tmp_path):
    cfg = settings_config({})
    del cfg["hyperparameters"]["warmup_ratio"]
    trial = make_trial(tmp_path, cfg)
    assert run_in_process(trial) == 2
    state = json.loads((trial / "state.json").read_text())
    assert state["state"] == "failed"
    assert f"{trial / 'config.json'}: $.hyperparameters.warmup_ratio: missing required key" in state["reason"]
    assert not (trial / "result.json").exists()


def test_submit_validates_the_frozen_trials_it_submits(tmp_path):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 2, per_trial={1: {"hyperparameters": {"epochs": 1.5},
                                            "slurm": {"time": "4h", "cpus_per_task": 0},
                                            "provenance": {"$.slurm.time": "config/cluster.json"}}})
    with pytest.raises(ConfigError) as err:
        submit(plan, executor="slurm", max_array_size=10)
    frozen = str(plan / "trials" / ids[1] / "config.json")
    assert sorted((p.path, p.file) for p in err.value.problems) == [
        ("$.hyperparameters.epochs", frozen),
        ("$.slurm.cpus_per_task", frozen),
        ("$.slurm.time", "config/cluster.json"),  # the layer that set it
    ]
    assert not (plan / "jobs").exists() and not (plan / "manifest.json").exists()


def test_slurm_formats_live_in_the_schema_only():
    """--timeout (plan, submit) and slurm.time/mem are checked by the schema's patterns."""
    assert field_error("config", ("slurm", "time"), "1-12:00:00") is None
    assert field_error("config", ("slurm", "time"), "4h") == load_schema("config")["properties"]["slurm"][
        "properties"]["time"]["errorMessage"]
    assert field_error("config", ("slurm", "mem"), "8 G")
    slurm = load_schema("config")["properties"]["slurm"]["properties"]
    patterns = [prop["pattern"].strip("^$") for prop in slurm.values() if "pattern" in prop]
    assert len(patterns) == 2  # mem and time
    root = Path(__file__).resolve().parent.parent / "finetune"
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not [p for p in patterns if p in text], path  # no copy of a rule of the schema


def test_a_trial_from_the_planner_is_valid(tmp_path):
    from finetune.login.plan import build_plan

    repo = Path(__file__).resolve().parent.parent
    files = [str(repo / "config" / f) for f in ("finetune-rus-pol.json", "finetune-rus-pol-topic.json")]
    plan = build_plan(files, ["checkpoints.normal=x", "tokenizers.normal_prefix=x"], model_types=("normal",))
    for trial in plan.trials:
        assert validate_trial(plan.trial_config(trial), "config.json") == []
