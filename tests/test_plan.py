"""Trial ids, the plan on disk, reruns and trial materialisation."""

from __future__ import annotations

import json
import os
import shutil

import json5
import pytest

from finetune.errors import ConfigError
from finetune.layout import trial_dir
from finetune.login.identity import canonical_json, trial_id
from finetune.login.plan import build_plan, load_plan, materialize_trial, materialize_trials, write_plan

PAIR = """// pair
{"checkpoints": {"prefix": "../models", "normal": "n-ckpt", "ipa": "i-ckpt"},
 "tokenizers": {"prefix": "../models", "normal_prefix": "n-tok", "ipa_prefix": "i-tok"}}"""
TASK = '{"task": "topic", "datasets": {"russian": "sib200", "polish": "sib200"}, "hyperparameters": {"epochs": 2}}'
# the same content: other key order, comments, trailing commas, formatting
TASK_REWRITTEN = """/* the same task */
{
  "hyperparameters": {"epochs": 2,},  // two epochs
  "datasets": {"polish": "sib200", "russian": "sib200"},
  "task": "topic",
}"""


@pytest.fixture
def confdir(tmp_path, config_dir):
    d = tmp_path / "conf"
    d.mkdir()
    for name in ("default.json", "language-database.json"):
        shutil.copy(config_dir / name, d / name)
    (d / "pair.json").write_text(PAIR)
    (d / "task.json").write_text(TASK)
    return d


def files(d, *names):
    return [str(d / n) for n in names]


def grid_file(tmp_path, name="grid.json", **data):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


def ids(plan):
    return [t.id for t in plan.trials]


def test_counts_grid_times_model_types(confdir, tmp_path):
    g = grid_file(tmp_path, parameters={"learning_rate": [1e-4, 2e-4, 3e-4], "batch_size": [16, 32], "seed": 1})
    plan = build_plan(files(confdir, "pair.json", "task.json"), grid_config=g)
    assert plan.counts() == {"normal": 6, "ipa": 6}
    assert all(t.hyperparameters["seed"] == 1 and t.hyperparameters["epochs"] == 2 for t in plan.trials)
    assert all(t.train_languages == ["polish", "russian"] == t.eval_languages for t in plan.trials)
    assert {t.grid_point["learning_rate"] for t in plan.trials} == {1e-4, 2e-4, 3e-4}
    assert all(set(t.grid_point) == {"learning_rate", "batch_size"} for t in plan.trials)
    only = build_plan(files(confdir, "pair.json", "task.json"), grid_config=g, model_types=["ipa"])
    assert only.counts() == {"ipa": 6}


def test_without_a_grid_one_trial_per_model_type(confdir):
    plan = build_plan(files(confdir, "pair.json", "task.json"))
    assert plan.counts() == {"normal": 1, "ipa": 1}
    assert len(set(ids(plan))) == 2


def test_ids_are_12_hex_and_stable_across_runs(confdir):
    a = build_plan(files(confdir, "pair.json", "task.json"))
    b = build_plan(files(confdir, "pair.json", "task.json"))
    assert ids(a) == ids(b)
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids(a))


def test_ids_ignore_file_names_key_order_comments_and_location(confdir, tmp_path):
    before = build_plan(files(confdir, "pair.json", "task.json"))
    other = tmp_path / "elsewhere"
    shutil.copytree(confdir, other)
    (other / "task.json").unlink()
    (other / "a-completely-different-name.jsonc").write_text(TASK_REWRITTEN)
    after = build_plan(files(other, "pair.json", "a-completely-different-name.jsonc"))
    assert ids(after) == ids(before)


@pytest.mark.parametrize("override", [
    "slurm.partition=gpu", "slurm.time=1-00:00:00", "wandb.project=x", 'data.mirrors={"Davlan/sib200": "/m"}',
    "data.cache_dir=/cache", "training.device=cpu", "training.num_workers=3", "training.strategy=ddp",
    "hyperparameters.epochs=2.0",
])
def test_operational_settings_do_not_change_ids(confdir, override):
    base = build_plan(files(confdir, "pair.json", "task.json"))
    assert ids(build_plan(files(confdir, "pair.json", "task.json"), [override])) == ids(base)


@pytest.mark.parametrize("override", [
    "hyperparameters.learning_rate=0.001", "hyperparameters.seed=1", "training.precision=bf16",
    "training.eval_interval=7", "checkpoints.normal=other", "tokenizers.prefix=../tok", "task=topic2",
])
def test_what_can_change_a_result_changes_the_id(confdir, override):
    base = build_plan(files(confdir, "pair.json", "task.json"))
    if override == "task=topic2":  # needs the task in the database too
        db = json.loads((confdir / "language-database.json").read_text())
        for lang in ("russian", "polish"):
            db[lang]["topic2"] = db[lang]["topic"]
        (confdir / "language-database.json").write_text(json.dumps(db))
    changed = build_plan(files(confdir, "pair.json", "task.json"), [override])
    assert set(ids(changed)).isdisjoint(ids(base)) or override.startswith(("checkpoints.normal",))
    if override.startswith("checkpoints.normal"):  # only the normal trial changes
        assert ids(changed)[0] != ids(base)[0] and ids(changed)[1] == ids(base)[1]


def test_database_entry_changes_change_the_id(confdir):
    base = build_plan(files(confdir, "pair.json", "task.json"))
    db = json.loads((confdir / "language-database.json").read_text())
    db["russian"]["topic"]["sib200"]["filter_length"] = True
    (confdir / "language-database.json").write_text(json.dumps(db))
    assert set(ids(build_plan(files(confdir, "pair.json", "task.json")))).isdisjoint(ids(base))


def test_languages_outside_a_trial_do_not_change_its_id(confdir, tmp_path):
    g = grid_file(tmp_path, languages={"train": "russian", "eval": "russian"})
    base = build_plan(files(confdir, "pair.json", "task.json"), grid_config=g)
    more = build_plan(files(confdir, "pair.json", "task.json"), ["datasets.czech=sib200"], grid_config=g)
    assert ids(more) == ids(base)


def test_adding_a_grid_value_adds_only_new_trials(confdir, tmp_path):
    cfg = files(confdir, "pair.json", "task.json")
    small = build_plan(cfg, grid_config=grid_file(tmp_path, "a.json", parameters={"learning_rate": [1e-4, 2e-4]}))
    big = build_plan(cfg, grid_config=grid_file(tmp_path, "b.json", parameters={"learning_rate": [3e-4, 2e-4, 1e-4]}))
    assert set(ids(small)) < set(ids(big))
    assert len(ids(big)) == 6
    out = tmp_path / "run"
    first = write_plan(small, out)
    assert sorted(first.added) == sorted(ids(small)) and first.total == 4
    second = write_plan(big, out)
    assert sorted(second.added) == sorted(set(ids(big)) - set(ids(small)))
    assert sorted(second.kept + second.updated) == sorted(ids(small))
    assert second.total == 6
    assert sorted(ids(load_plan(out))) == sorted(ids(big))


def test_fast_record_text_and_canonical_hash_agree_with_the_plain_functions(confdir, tmp_path):
    g = grid_file(tmp_path, parameters={"learning_rate": [1e-4, 2.0], "dropout": [0.0, 0.5], "epochs": 1},
                  zip=[["learning_rate", "dropout"]])
    plan = build_plan(files(confdir, "pair.json", "task.json"), grid_config=g)
    for t in plan.trials:
        assert json.loads(t.point_text) == t.grid_point
        assert {**t.base, **t.grid_point} == t.hyperparameters
    # the id equals the documented formula over the canonical identity
    t = plan.trials[0]
    db = json.loads((confdir / "language-database.json").read_text())
    default = json5.loads((confdir / "default.json").read_text())
    training = {k: v for k, v in default["training"].items()
                if k not in ("strategy", "device", "num_workers", "checkpoint_interval", "compile", "count_sleep_s",
                             "eval_batch_size", "log_interval", "dump_logits", "logit_directory")}
    identity = {"id_version": 3, "task": "topic", "model_type": t.model_type,
                "train_languages": t.train_languages, "selection_languages": ["polish", "russian"],
                "datasets": {lang: {"name": "sib200", "entry": db[lang]["topic"]["sib200"]}
                             for lang in ("polish", "russian")},
                "training": training, "checkpoint": ["../models", "n-ckpt"], "tokenizer": ["../models", "n-tok"]}
    assert trial_id(identity, t.hyperparameters) == t.lineage  # the lineage: the id without the files' contents
    inputs = plan.groups[t.group]["inputs"]
    identity["inputs"] = {"checkpoint": inputs["checkpoints"][t.model_type],
                          "tokenizer": inputs["tokenizers"][t.model_type], "datasets": {}}
    assert trial_id(identity, t.hyperparameters) == t.id
    assert canonical_json({"b": 1.0, "a": [2.5, 3.0]}) == '{"a":[2.5,3],"b":1}'


def test_exclude_everything_is_an_error(confdir, tmp_path):
    g = grid_file(tmp_path, parameters={"seed": [1, 2]}, exclude=[{"seed": [1, 2]}])
    with pytest.raises(ConfigError, match=r"grid.json: \$.exclude: the exclude rules drop every trial"):
        build_plan(files(confdir, "pair.json", "task.json"), grid_config=g)


def test_write_plan_is_valid_json_and_leaves_no_temporary_files(confdir, tmp_path):
    plan = build_plan(files(confdir, "pair.json", "task.json"))
    out = tmp_path / "run"
    write_plan(plan, out)
    data = json.loads((out / "plan.json").read_text())
    assert data["version"] == 2
    assert [t["id"] for t in data["trials"]] == ids(plan)
    assert set(data["trials"][0]) == {"id", "set", "grid_point", "lineage"}
    assert set(data["sets"][0]) == {"group", "model_type", "train_languages", "eval_languages", "hyperparameters"}
    assert data["sources"][0]["files"][-1] == str(confdir / "task.json")
    assert sorted(os.listdir(out)) == [".plan.lock", "plan.json"]  # nothing per trial at plan time


def test_materialize_trial_writes_the_frozen_resolved_config(confdir, tmp_path, sib200_dir):
    g = grid_file(tmp_path, parameters={"learning_rate": [1e-4, 2e-4], "seed": 5})
    plan = build_plan(files(confdir, "pair.json", "task.json"),
                      [f'data.mirrors={{"Davlan/sib200": "{sib200_dir}"}}'], grid_config=g)
    out = tmp_path / "run"
    write_plan(plan, out)
    t = plan.trials[0]
    path = materialize_trial(out, t.id)
    assert path == trial_dir(out, t.id) / "config.json"
    cfg = json.loads(path.read_text())
    assert {"id", "model_type", "task", "train_languages", "eval_languages", "hyperparameters", "training",
            "slurm", "wandb", "checkpoint", "tokenizer", "datasets", "provenance", "grid_point"} <= set(cfg)
    assert cfg["id"] == t.id and cfg["model_type"] == "normal"
    assert cfg["checkpoint"] == str(tmp_path / "models" / "n-ckpt" / "ckpt.pt")
    assert cfg["tokenizer"] == str(tmp_path / "models" / "n-tok")
    ru = cfg["datasets"]["russian"]
    assert ru["espeak"] == "ru" and ru["subset"] == "rus_Cyrl" and ru["language"] == "russian"
    assert ru["path"] == str(sib200_dir / "rus_Cyrl") and os.path.isfile(os.path.join(ru["path"], "train.tsv"))
    assert ru["labels"] == (sib200_dir / "rus_Cyrl" / "labels.txt").read_text().split()
    prov = cfg["provenance"]
    assert prov["$.hyperparameters.learning_rate"] == g
    assert prov["$.hyperparameters.seed"] == g
    assert prov["$.hyperparameters.epochs"] == str(confdir / "task.json")
    assert prov['$.data.mirrors["Davlan/sib200"]'] == "--set"
    assert cfg["grid_point"] == {"learning_rate": 1e-4}
    assert cfg["hyperparameters"]["seed"] == 5


def test_a_materialised_trial_is_frozen_until_refreshed(confdir, tmp_path):
    cfg = files(confdir, "pair.json", "task.json")
    out = tmp_path / "run"
    plan = build_plan(cfg)
    write_plan(plan, out)
    normal, ipa = plan.trials
    path = materialize_trial(out, normal.id)
    before = path.read_bytes()
    # replan with another cluster setting: same ids, plan.json takes the new setting
    report = write_plan(build_plan(cfg, ["slurm.partition=gpu"]), out)
    assert report.added == [] and report.kept == [] and report.updated == [normal.id, ipa.id]
    reloaded = load_plan(out)
    assert [t.id for t in reloaded.trials] == [normal.id, ipa.id] and len(reloaded.groups) == 1
    # the frozen file is untouched (queued work keeps what it was submitted with) ...
    assert materialize_trial(out, normal.id) == path and path.read_bytes() == before
    assert json.loads(materialize_trial(out, ipa.id).read_text())["slurm"]["partition"] == "gpu"
    # ... until the trial is to be submitted again
    assert json.loads(materialize_trial(out, normal.id, refresh=True).read_text())["slurm"]["partition"] == "gpu"
    after = path.read_bytes()
    materialize_trial(out, normal.id, refresh=True)  # nothing changed: not rewritten
    assert path.read_bytes() == after
    # a replan that leaves a trial out keeps it
    report = write_plan(build_plan(cfg, ["slurm.partition=gpu"], model_types=["ipa"]), out)
    assert report.added == [] and report.kept + report.updated == [ipa.id]
    assert [t.id for t in load_plan(out).trials] == [normal.id, ipa.id]


def test_materialize_trials_and_unknown_ids(confdir, tmp_path):
    out = tmp_path / "run"
    write_plan(build_plan(files(confdir, "pair.json", "task.json")), out)
    paths = materialize_trials(out)
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    with pytest.raises(ConfigError, match="no trial with id 'nope'"):
        materialize_trial(out, "nope")


def test_load_plan_without_a_plan(tmp_path):
    with pytest.raises(ConfigError, match=r"plan.json: no plan here"):
        load_plan(tmp_path)


def test_adding_an_eval_language_keeps_the_trained_models_ids(confdir, tmp_path):
    """The id is the trained model's: eval languages that do not choose the checkpoint are not in it."""
    db = json.loads((confdir / "language-database.json").read_text())
    assert "czech" in db and "sib200" in db["czech"]["topic"]
    base = build_plan(files(confdir, "pair.json", "task.json"),
                      grid_config=grid_file(tmp_path, "a.json", languages={"train": "russian", "eval": ["russian", "polish"]}))
    more = build_plan(files(confdir, "pair.json", "task.json"), ["datasets.czech=sib200"],
                      grid_config=grid_file(tmp_path, "b.json", languages={"train": "russian", "eval": ["russian", "polish", "czech"]}))
    assert ids(more) == ids(base)
    assert [t.eval_languages for t in more.trials] == [["czech", "polish", "russian"]] * 2
    out = tmp_path / "run"
    write_plan(base, out)
    report = write_plan(more, out)
    assert report.added == [] and report.superseded == [] and report.total == 2
    assert {tuple(t.eval_languages) for t in load_plan(out).trials} == {("czech", "polish", "russian")}
    # what chooses the checkpoint is in the id: the oracle protocol, or no training language evaluated
    oracle = build_plan(files(confdir, "pair.json", "task.json"), ["datasets.czech=sib200",
                                                                    "training.selection=each-language"],
                        grid_config=grid_file(tmp_path, "c.json", languages={"train": "russian", "eval": ["russian", "polish", "czech"]}))
    oracle_base = build_plan(files(confdir, "pair.json", "task.json"), ["training.selection=each-language"],
                             grid_config=grid_file(tmp_path, "d.json", languages={"train": "russian", "eval": ["russian", "polish"]}))
    assert set(ids(oracle)).isdisjoint(ids(oracle_base))
    cross = build_plan(files(confdir, "pair.json", "task.json"),
                       grid_config=grid_file(tmp_path, "e.json", languages={"train": "russian", "eval": ["polish"]}))
    cross_more = build_plan(files(confdir, "pair.json", "task.json"), ["datasets.czech=sib200"],
                            grid_config=grid_file(tmp_path, "f.json", languages={"train": "russian", "eval": ["polish", "czech"]}))
    assert set(ids(cross)).isdisjoint(ids(cross_more))


def test_trials_of_an_older_id_version_are_superseded_by_what_trains_the_same(confdir, tmp_path):
    """A plan written before ids left out the eval languages: replanning supersedes its trials
    (one new trial each), whatever eval languages they had, and nothing else."""
    g = grid_file(tmp_path, parameters={"learning_rate": [1e-4, 2e-4]})
    plan = build_plan(files(confdir, "pair.json", "task.json"), grid_config=g)
    out = tmp_path / "run"
    write_plan(plan, out)
    data = json.loads((out / "plan.json").read_text())
    data["groups"] = {f"old{g}": {k: v for k, v in group.items() if k != "id_version"}  # as ID_VERSION 2 wrote it
                      for g, group in data["groups"].items()}
    old_ids = {}
    for i, r in enumerate(data["trials"]):
        old_ids[r["id"]] = f"{i:012x}"
        r["id"], r["lineage"] = f"{i:012x}", f"{i + 100:012x}"  # another formula's
    for s in data["sets"]:
        s["group"] = "old" + s["group"]
    (out / "plan.json").write_text(json.dumps(data))
    other = build_plan(files(confdir, "pair.json", "task.json"),
                       grid_config=grid_file(tmp_path, "g.json", parameters={"learning_rate": [3e-4]}))
    assert write_plan(other, out).superseded == []  # other hyperparameters: nothing to replace
    report = write_plan(plan, out)
    assert sorted(report.added) == sorted(ids(plan))
    assert sorted(report.superseded) == sorted(old_ids.values())
    records = {t.id: t for t in load_plan(out).trials}
    for new_id, old_id in old_ids.items():
        assert records[old_id].superseded_by == new_id


def test_replanning_an_extended_grid_appends_without_encoding_the_trials_already_there(confdir, tmp_path,
                                                                                        monkeypatch):
    from finetune.login import plan_file

    encoded: list[str] = []
    real = plan_file.record_line
    monkeypatch.setattr(plan_file, "record_line", lambda t, i=None: encoded.append(t.id) or real(t, i))
    pair = files(confdir, "pair.json", "task.json")
    small = build_plan(pair, grid_config=grid_file(tmp_path, "a.json", parameters={"seed": [1, 2, 3]}))
    out = tmp_path / "run"
    write_plan(small, out)
    before = (out / "plan.json").read_text()
    encoded.clear()
    # the same grid file with more seeds (another file would be another group: its provenance)
    big = build_plan(pair, grid_config=grid_file(tmp_path, "a.json", parameters={"seed": [1, 2, 3, 4, 5]}))
    report = write_plan(big, out)
    new = set(ids(big)) - set(ids(small))
    assert sorted(report.added) == sorted(new) and sorted(encoded) == sorted(new)  # only the new trials encoded
    after = (out / "plan.json").read_text()
    assert after.startswith(before[:-len(plan_file.TAIL)])  # what was there, byte for byte
    assert after == plan_file.dump(plan_file.PLAN_VERSION, *(lambda d: (d["sources"], d["groups"]))(
        json.loads(after)), load_plan(out).trials)  # the same text a full write makes
    assert [t.id for t in load_plan(out).trials] == ids(small) + [i for i in ids(big) if i in new]

    # a changed header (another group: a slurm setting differs) is written whole
    encoded.clear()
    other = build_plan(pair, ["slurm.partition=other"], grid_config=grid_file(tmp_path, "c.json",
                                                                             parameters={"seed": [6]}))
    write_plan(other, out)
    assert len(encoded) == len(load_plan(out).trials)
