"""The original tool's config folders (tests/legacy/config) load as they are; `config migrate`.

The fixture folder is written in the original formats: a default.json with every legacy key,
language-pair layers for rus-pol and eng-spa, sentiment / entailment / QA task layers, a
language database with list splits and no espeak voices, grid configs with comments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import json5
import pytest

from finetune.errors import ConfigError
from finetune.login.layers import load_config
from finetune.login.legacy import translate_database, translate_layer
from finetune.login.plan import build_plan, load_plan, materialize_trial, write_plan

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "legacy"  # the working directory the original tool ran in
CONFIG = LEGACY / "config"
PY = sys.executable

LEGACY_WARNINGS = [
    "warning: config/default.json: $.checkpoints.is_medium: legacy key ignored: the model size is read from "
    "the checkpoint",
    "warning: config/default.json: $.checkpoints.training: legacy key ignored: fine-tuned checkpoints go under "
    "the plan directory, trials/<id>/checkpoints",
    "warning: config/default.json: $.nanogpt: legacy key ignored: the nanoGPT model is built in, "
    "finetune/compute/model.py",
]


def run(*argv: str, cwd: Path = LEGACY) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([PY, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def layers(pair: str, task: str, folder: Path = CONFIG) -> list[str]:
    return [str(folder / f"finetune-{pair}.json"), str(folder / f"finetune-{pair}-{task}.json")]


# -- planning the folder as it is, with both scripts and the CLI ---------------------------------

PLAN_CASES = [
    # (command, pair, task, grid, counts, [(train, eval)] language sets)
    pytest.param(["../../scripts/grid-search.py"], "rus-pol", "sentiment", "grid-search.json",
                 {"normal": 4, "ipa": 4}, [(["polish", "russian"], ["polish", "russian"])], id="grid-search.py"),
    pytest.param(["../../scripts/grid-search.py"], "rus-pol", "entailment", "grid-search-russian.json",
                 {"normal": 3, "ipa": 3}, [(["russian"], ["polish", "russian"])], id="grid-search.py train russian"),
    pytest.param(["../../scripts/finetuning-generator.py"], "rus-pol", "qa", None, {"normal": 3, "ipa": 3},
                 [(["polish"], ["polish", "russian"]), (["russian"], ["polish", "russian"]),
                  (["polish", "russian"], ["polish", "russian"])], id="finetuning-generator.py qa"),
    pytest.param(["../../scripts/finetuning-generator.py"], "eng-spa", "sentiment", "grid-search.json",
                 {"normal": 12, "ipa": 12},
                 [(["english"], ["english", "spanish"]), (["spanish"], ["english", "spanish"]),
                  (["english", "spanish"], ["english", "spanish"])], id="finetuning-generator.py x grid"),
    pytest.param(["-m", "finetune", "plan"], "eng-spa", "qa", "grid-search.json", {"normal": 4, "ipa": 4},
                 [(["english", "spanish"], ["english", "spanish"])], id="finetune plan qa"),
    pytest.param(["-m", "finetune", "matrix"], "eng-spa", "entailment", None, {"normal": 3, "ipa": 3},
                 [(["english"], ["english", "spanish"]), (["spanish"], ["english", "spanish"]),
                  (["english", "spanish"], ["english", "spanish"])], id="finetune matrix"),
]


@pytest.mark.parametrize("command, pair, task, grid, counts, language_sets", PLAN_CASES)
def test_the_legacy_folder_plans_as_it_is(tmp_path, command, pair, task, grid, counts, language_sets):
    files = [f"config/finetune-{pair}.json", f"config/finetune-{pair}-{task}.json"]
    extra = ["--grid-config", f"config/{grid}"] if grid else []
    proc = run(*command, *files, *extra, "-o", str(tmp_path / "plan"), "--no-submit")
    assert proc.returncode == 0, proc.stderr
    total = sum(counts.values())
    assert f"planned {total} trials (normal: {counts['normal']}, ipa: {counts['ipa']})" in proc.stdout
    warnings = proc.stderr.splitlines()
    assert warnings[:3] == LEGACY_WARNINGS
    top_k = ("warning: config/default.json: $.hyperparameters.top_k: not used: a question-answering "
             f"hyperparameter, and task '{task}' is classification")
    assert warnings[3:] == ([] if task == "qa" else [top_k])
    plan = load_plan(tmp_path / "plan")
    assert sorted({(tuple(t.train_languages), tuple(t.eval_languages)) for t in plan.trials}) == sorted(
        (tuple(a), tuple(b)) for a, b in language_sets)
    hyper = plan.trials[0].hyperparameters
    assert hyper["seed"] == 1337 and hyper["weight_decay"] == 0.01  # random_seed; the user's default.json
    if task == "qa":
        assert (hyper["max_answer_length"], hyper["top_k"]) == (30, 20)  # the task layer's
    else:
        assert "top_k" not in hyper and "max_answer_length" not in hyper
    group = next(iter(plan.groups.values()))
    assert group["config"]["database"] == str(CONFIG / "language-database.json")  # the folder's own
    assert group["config"]["training"]["device"] == "cpu"  # cpu_only
    assert group["config"]["data"]["cache_dir"] == "/scratch/ipa-gpt/hf-cache"  # hf_cache
    assert group["config"]["wandb"]["entity"] == "ipa-gpt"


def test_a_dry_run_without_their_checkpoints_or_datasets_lists_them_as_warnings(tmp_path):
    proc = run("-m", "finetune", "plan", *[f"config/finetune-rus-pol{s}.json" for s in ("", "-sentiment")],
               "-o", str(tmp_path / "plan"), "--dry-run", "--executor", "local")
    assert proc.returncode == 0, proc.stderr
    assert "dry run: nothing submitted" in proc.stdout
    for missing in ("checkpoint not found: /scratch/ipa-gpt/checkpoints/rus-pol-normal/ckpt.pt",
                    "checkpoint not found: /scratch/ipa-gpt/checkpoints/rus-pol-ipa/ckpt.pt",
                    "/scratch/ipa-gpt/tokenizers/rus-pol-ipa-vocab.json: tokenizer file not found",
                    "hub dataset legacy-org/rusentiment-ipa is not in the cache /scratch/ipa-gpt/hf-cache",
                    "hub dataset legacy-org/polemo-ipa is not in the cache /scratch/ipa-gpt/hf-cache"):
        assert missing in proc.stderr


# -- every legacy key: mapped, or accepted with one warning naming it -----------------------------

LAYER_CASES = [
    # (legacy layer, translated layer, warnings (path: message))
    pytest.param({"hf_cache": "/cache"}, {"data": {"cache_dir": "/cache"}}, [], id="hf_cache"),
    pytest.param({"hf_cache": None, "data": {"mirrors": {}}}, {"data": {"mirrors": {}, "cache_dir": None}}, [],
                 id="hf_cache null beside data"),
    pytest.param({"random_seed": 7, "hyperparameters": {"epochs": 1}}, {"hyperparameters": {"epochs": 1, "seed": 7}},
                 [], id="random_seed"),
    pytest.param({"random_seed": 7, "hyperparameters": {"seed": 7}}, {"hyperparameters": {"seed": 7}}, [],
                 id="random_seed equal to seed"),
    pytest.param({"cpu_only": True}, {"training": {"device": "cpu"}}, [], id="cpu_only true"),
    pytest.param({"cpu_only": False}, {}, [], id="cpu_only false: nothing to set"),
    pytest.param({"checkpoints": {"prefix": "/ck", "is_medium": True}}, {"checkpoints": {"prefix": "/ck"}},
                 ["$.checkpoints.is_medium: legacy key ignored: the model size is read from the checkpoint"],
                 id="checkpoints.is_medium"),
    pytest.param({"checkpoints": {"training": "/ft"}}, {"checkpoints": {}},
                 ["$.checkpoints.training: legacy key ignored: fine-tuned checkpoints go under the plan directory, "
                  "trials/<id>/checkpoints"], id="checkpoints.training"),
    pytest.param({"nanogpt": "/src/nanoGPT"}, {},
                 ["$.nanogpt: legacy key ignored: the nanoGPT model is built in, finetune/compute/model.py"],
                 id="nanogpt"),
    pytest.param({"wandb": {"entity": "team"}, "tokenizers": {"prefix": "/tok"}},
                 {"wandb": {"entity": "team"}, "tokenizers": {"prefix": "/tok"}}, [], id="current keys untouched"),
]


@pytest.mark.parametrize("layer, expected, warnings", LAYER_CASES)
def test_every_legacy_key_is_mapped_or_warned(layer, expected, warnings):
    original = json.loads(json.dumps(layer))
    t = translate_layer(layer, "d.json")
    assert t.problems == []
    assert t.value == expected
    assert [f"{w.path}: {w.message}" for w in t.warnings("d.json")] == warnings
    assert layer == original  # the input is not changed


def test_relative_paths_of_a_legacy_layer_are_warned_about(tmp_path):
    legacy = tmp_path / "default.json"
    legacy.write_text('{"nanogpt": "x", "checkpoints": {"prefix": "ckpts"}, "hf_cache": "cache"}')
    current = tmp_path / "pair.json"
    current.write_text('{"tokenizers": {"prefix": "tok"}}')  # not a legacy layer: its paths are ours
    layered = load_config([str(current)])
    note = ("relative to this file's folder (the original tool read it relative to the working directory); "
            "make it absolute or relative to this file if that is not the same place")
    assert [f"{w.path}: {w.message}" for w in layered.warnings] == [
        "$.nanogpt: legacy key ignored: the nanoGPT model is built in, finetune/compute/model.py",
        f"$.checkpoints.prefix: {note}", f"$.data.cache_dir: {note}"]
    assert layered.resolve("$.data.cache_dir", layered.value["data"]["cache_dir"]) == str(tmp_path / "cache")


BAD_LAYER_CASES = [
    pytest.param({"random_seed": "42"}, ['d.json: $.random_seed: must be an integer >= 0 (got \'42\')'], id="seed type"),
    pytest.param({"cpu_only": "yes"}, ["d.json: $.cpu_only: must be true or false (got 'yes')"], id="cpu_only type"),
    pytest.param({"hf_cache": 3}, ["d.json: $.hf_cache: must be a path or null (got 3)"], id="hf_cache type"),
    pytest.param({"random_seed": 1, "hyperparameters": {"seed": 2}},
                 ["d.json: $.random_seed: conflicts with $.hyperparameters.seed (2) in the same file; keep one of them"],
                 id="conflict"),
]


@pytest.mark.parametrize("layer, problems", BAD_LAYER_CASES)
def test_unusable_legacy_values_are_problems(layer, problems):
    assert [str(p) for p in translate_layer(layer, "d.json").problems] == problems


def test_the_merged_legacy_config(monkeypatch):
    monkeypatch.chdir(LEGACY)
    layered = load_config(["config/finetune-rus-pol.json", "config/finetune-rus-pol-sentiment.json"])
    assert layered.sources == [str(REPO / "config" / "default.json"), "config/default.json", "config/finetune-rus-pol.json",
                               "config/finetune-rus-pol-sentiment.json"]  # the shipped default.json is the base
    v = layered.value
    assert v["checkpoints"] == {"prefix": "/scratch/ipa-gpt/checkpoints", "normal": "rus-pol-normal",
                                "ipa": "rus-pol-ipa"}
    assert v["hyperparameters"]["seed"] == 1337 and v["hyperparameters"]["batch_size"] == 16
    assert v["training"]["device"] == "cpu" and v["data"]["cache_dir"] == "/scratch/ipa-gpt/hf-cache"
    assert v["wandb"] == {"project": "rus-pol-sentiment", "entity": "ipa-gpt", "mode": "online"}
    assert "nanogpt" not in v and "is_medium" not in v["checkpoints"]
    assert v["database"] == "language-database.json"
    assert layered.provenance["$.database"] == "config/language-database.json"
    assert layered.resolve("$.database", v["database"]) == str(CONFIG / "language-database.json")


def test_which_database_a_folder_uses(tmp_path, config_dir):
    (tmp_path / "task.json").write_text('{"task": "topic", "datasets": {"russian": "sib200"}}')
    shipped = str(config_dir / "language-database.json")
    layered = load_config([str(tmp_path / "task.json")])
    assert layered.resolve("$.database", layered.value["database"]) == shipped  # the folder has none
    shutil.copy(config_dir / "language-database.json", tmp_path / "language-database.json")
    layered = load_config([str(tmp_path / "task.json")])
    assert layered.resolve("$.database", layered.value["database"]) == str(tmp_path / "language-database.json")
    (tmp_path / "default.json").write_text(json.dumps({"database": shipped}))
    layered = load_config([str(tmp_path / "task.json")])
    assert layered.value["database"] == shipped  # a layer that names one wins


# -- the database in the original format -----------------------------------------------------------


def test_list_splits_become_train_eval_test():
    entry = {"dataset": "d", "train_features": ["t"], "eval_feature": "l", "splits": ["train", "dev"],
             "task_type": "classification", "classes": 2}
    t = translate_database({"german": {"sentiment": {"x": entry}}}, "db.json")
    assert t.problems == []
    assert t.value["german"]["sentiment"]["x"]["splits"] == {"train": "train", "eval": "dev", "test": "dev"}
    assert "espeak" not in t.value["german"]  # derived when needed, written out only by migrate
    bad = translate_database({"german": {"sentiment": {"x": {**entry, "splits": ["train"]}}}}, "db.json")
    assert [str(p) for p in bad.problems] == [
        'db.json: $.german.sentiment.x.splits: must be [train, eval] (original format), [train, eval, test] or an '
        'object (got ["train"])']


def test_espeak_voices_come_from_the_language_name(config_dir):
    from finetune.login.database import ESPEAK_VOICES, espeak_voice, load_database

    shipped = load_database(config_dir / "language-database.json")
    for language in [*shipped.languages(), "english", "spanish", "german", "french", "hindi", "urdu"]:
        assert espeak_voice(language) is not None, language
    for language in shipped.languages():  # the table agrees with the voices our database names
        assert espeak_voice(language) == shipped.data[language]["espeak"]
    legacy = load_database(CONFIG / "language-database.json")
    assert [legacy.espeak(lang) for lang in legacy.languages()] == ["ru", "pl", "en-us", "es"]
    assert espeak_voice("Klingon") is None
    from finetune.compute import ipa

    ipa._configure_library()
    from phonemizer.backend import EspeakBackend

    voices = set(EspeakBackend.supported_languages())
    assert sorted(v for v in ESPEAK_VOICES.values() if v not in voices) == []


def test_a_language_without_a_voice_plans_with_a_warning_for_ipa(tmp_path):
    db = json.loads((CONFIG / "language-database.json").read_text())
    db["klingon"] = db.pop("polish")
    (tmp_path / "language-database.json").write_text(json.dumps(db))
    (tmp_path / "pair.json").write_text(json.dumps({"checkpoints": {"prefix": "/c", "normal": "n", "ipa": "i"},
                                                    "tokenizers": {"prefix": "/t", "normal_prefix": "n",
                                                                   "ipa_prefix": "i"}}))
    (tmp_path / "task.json").write_text('{"task": "sentiment", "datasets": {"russian": "rusentiment", '
                                        '"klingon": "polemo"}}')
    files = [str(tmp_path / "pair.json"), str(tmp_path / "task.json")]
    plan = build_plan(files)
    assert [str(w) for w in plan.warnings] == [
        f"{files[1]}: $.datasets.klingon: no espeak-ng voice known for 'klingon' (add \"espeak\" to it in "
        f"{os.path.relpath(tmp_path / 'language-database.json')}); ipa trials need its datasets to carry "
        "<feature>-phoneme columns"]
    assert build_plan(files, model_types=["normal"]).warnings == []


# -- question answering in the planner ------------------------------------------------------------


def test_qa_hyperparameters_validate_and_only_qa_may_sweep_them(tmp_path):
    qa = layers("rus-pol", "qa")
    with pytest.raises(ConfigError) as e:
        build_plan(qa, ["hyperparameters.top_k=0", "hyperparameters.max_answer_length=x"])
    assert str(e.value).splitlines() == [
        '--set: $.hyperparameters.max_answer_length: must be an integer (got "x")',
        "--set: $.hyperparameters.top_k: must be >= 1 (got 0)"]
    grid = tmp_path / "grid.json"
    grid.write_text('{"parameters": {"top_k": [5, 10]}}')
    assert len(build_plan(qa, grid_config=str(grid)).trials) == 4
    with pytest.raises(ConfigError) as e:
        build_plan(layers("rus-pol", "sentiment"), grid_config=str(grid))
    assert str(e.value) == (f"{grid}: $.parameters.top_k: a question-answering hyperparameter, and task "
                            "'sentiment' is classification")


def test_train_takes_a_question_answering_trial(tmp_path):
    """QA trials train now: this one gets past the task check and stops (exit 2, nothing written)
    at its inputs, which live on the original cluster."""
    out = tmp_path / "plan"
    plan = build_plan(layers("rus-pol", "qa"), model_types=["normal"])
    write_plan(plan, out)
    trial = plan.trials[0].id
    materialize_trial(out, trial)
    proc = run("-m", "finetune", "train", str(out / "trials" / trial), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot train this trial" not in proc.stderr
    assert proc.stderr.startswith("error: tokenizer: /scratch/ipa-gpt/tokenizers/rus-pol-normal-")
    assert not (out / "trials" / trial / "result.json").exists()


# -- precomputed -phoneme columns ---------------------------------------------------------------


def test_precomputed_phoneme_columns_are_used_without_the_transcriber(tmp_path, monkeypatch):
    """Their hub datasets carry <feature>-phoneme columns: used as they are; only a missing one is made."""
    from finetune.compute import data, ipa

    mirrors = {"legacy-org/rusentiment-ipa": "rusentiment", "legacy-org/polemo-ipa": "polemo",
               "legacy-org/xnli-ru-ipa": "xnli-ru", "legacy-org/cdsc-e-ipa": "cdsc-e"}
    sets = [f"data.mirrors={json.dumps({k: str(LEGACY / 'data' / v) for k, v in mirrors.items()})}",
            f"data.cache_dir={tmp_path / 'cache'}"]
    calls = []
    real = ipa.transcribe
    monkeypatch.setattr(ipa, "transcribe", lambda texts, voice: calls.append((list(texts), voice)) or real(texts, voice))

    plan = build_plan(layers("rus-pol", "sentiment"), sets, model_types=["ipa"])
    raw, problems = data.load_trial_raw(plan.trial_config(plan.trials[0]))
    assert problems == [] and calls == []
    assert raw["russian"]["train"]["text-phoneme"][0] == "PRECOMPUTED otlʲitʃnɨj fʲilʲm"
    assert raw["polish"]["eval"]["text-phoneme"] == ["PRECOMPUTED dɔbra kava", "PRECOMPUTED nudnɨ film"]  # dev
    assert data.input_columns(plan.trial_config(plan.trials[0])["datasets"]["polish"], "ipa") == ["text-phoneme"]

    plan = build_plan(layers("rus-pol", "entailment"), sets, model_types=["ipa"])
    raw, problems = data.load_trial_raw(plan.trial_config(plan.trials[0]))
    assert problems == []
    # cdsc-e lacks hypothesis-phoneme: only that column is transcribed, with the voice derived from "polish"
    assert sorted(voice for _texts, voice in calls) == ["pl", "pl"]  # train and validation (= test) splits
    assert sorted(t for texts, _v in calls for t in texts) == sorted(
        ["Pies się rusza", "Jest słonecznie", "Dziecko jest w domu", "Kot odpoczywa"])
    assert raw["polish"]["train"]["premise-phoneme"][0] == "PRECOMPUTED pʲɛs bʲɛɡɲɛ"
    assert raw["polish"]["train"]["hypothesis-phoneme"][0] == real(["Pies się rusza"], "pl")[0]


# -- finetune config migrate ----------------------------------------------------------------------


def migrate(*argv: str, cwd: Path = LEGACY) -> subprocess.CompletedProcess:
    return run("-m", "finetune", "config", "migrate", *argv, cwd=cwd)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("migrated") / "config"
    proc = migrate("config", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_migrate_writes_every_file_under_its_name(migrated):
    assert sorted(p.name for p in migrated.iterdir()) == sorted(p.name for p in CONFIG.iterdir())
    for path in migrated.iterdir():
        value = json5.loads(path.read_text())
        kind = {"language-database.json": "database", "grid-search.json": "grid",
                "grid-search-russian.json": "grid"}.get(path.name, "config")
        assert (migrated / value["$schema"]).resolve() == REPO / "finetune" / "login" / "schemas" / f"{kind}.schema.json"
    default = (migrated / "default.json").read_text()
    assert json5.loads(default) == {
        "$schema": json5.loads(default)["$schema"], "database": "language-database.json",
        "checkpoints": {"prefix": "/scratch/ipa-gpt/checkpoints"}, "tokenizers": {"prefix": "/scratch/ipa-gpt/tokenizers"},
        "hyperparameters": {"weight_decay": 0.01, "gradient_clipping": 1.0, "batch_size": 16, "top_k": 5, "seed": 1337},
        "wandb": {"entity": "ipa-gpt"}, "data": {"cache_dir": "/scratch/ipa-gpt/hf-cache"},
        "training": {"device": "cpu"}}
    for comment in ("// Mapped (see the comment beside each): hf_cache -> data.cache_dir, random_seed -> "
                    "hyperparameters.seed, cpu_only -> training.device, database (added)",
                    '//   checkpoints.is_medium: false: the model size is read from the checkpoint',
                    '//   checkpoints.training: "/scratch/ipa-gpt/finetuned": fine-tuned checkpoints go under',
                    '//   nanogpt: "/home/ipa-gpt/nanoGPT": the nanoGPT model is built in',
                    '    // was random_seed: 1337 in the original format (the default seed)'):
        assert comment in default
    db = json5.loads((migrated / "language-database.json").read_text())
    assert db["polish"]["espeak"] == "pl"
    assert db["polish"]["sentiment"]["polemo"]["splits"] == {"train": "train", "eval": "dev", "test": "dev"}
    assert "// was [\"train\", \"dev\"] (original format)" in (migrated / "language-database.json").read_text()


@pytest.mark.parametrize("pair, task, grid, matrix", [("rus-pol", "sentiment", "grid-search.json", False),
                                                      ("eng-spa", "qa", None, True),
                                                      ("rus-pol", "entailment", "grid-search-russian.json", True)])
def test_migrated_folder_plans_the_same_trials_with_the_same_ids(migrated, pair, task, grid, matrix):
    def plan(folder):
        return build_plan(layers(pair, task, folder), grid_config=str(folder / grid) if grid else None, matrix=matrix)

    old, new = plan(CONFIG), plan(migrated)
    assert [t.id for t in new.trials] == [t.id for t in old.trials] and len(old.trials) >= 6
    def same(t):
        return {k: v for k, v in t.record().items() if k != "group"}  # the group hashes file names

    assert [same(t) for t in new.trials] == [same(t) for t in old.trials]
    assert all("legacy key" not in w.message for w in new.warnings)  # nothing left to ignore


def test_migrating_again_changes_nothing_and_an_edited_target_needs_force(migrated, tmp_path):
    out = tmp_path / "config"
    shutil.copytree(migrated, out)
    proc = migrate("config", "--out", str(out))
    assert proc.returncode == 0 and proc.stdout.count("unchanged ") == len(list(CONFIG.iterdir()))
    (out / "grid-search.json").write_text("{}")
    proc = migrate("config", "--out", str(out))
    assert (proc.returncode, proc.stderr) == (2, f"error: {out}/grid-search.json: exists and differs; remove it or "
                                                 "use --force\n")
    assert migrate("config", "--out", str(out), "--force").returncode == 0
    assert (out / "grid-search.json").read_text() == (migrated / "grid-search.json").read_text()


def test_migrate_bad_input_names_file_and_path_and_writes_nothing(tmp_path):
    src = tmp_path / "config"
    shutil.copytree(CONFIG, src)
    default = json.loads((src / "default.json").read_text())
    default["random_seed"] = "1337"
    (src / "default.json").write_text(json.dumps(default))
    db = json.loads((src / "language-database.json").read_text())
    db["polish"]["qa"]["poquad"]["splits"] = ["train"]
    (src / "language-database.json").write_text(json.dumps(db))
    (src / "grid-search.json").write_text('{"parameters": {"learning_rat": [1e-4]}}')
    (src / "finetune-rus-pol.json").write_text('{"checkpoints": {"normal": 3}}')
    out = tmp_path / "out"
    proc = migrate(str(src), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {src}/default.json: $.random_seed: must be an integer >= 0 (got '1337')",
        f"{src}/finetune-rus-pol.json: $.checkpoints.normal: must be a string or null (got 3)",
        f"{src}/grid-search.json: $.parameters.learning_rat: not a hyperparameter (did you mean learning_rate?)",
        f'{src}/language-database.json: $.polish.qa.poquad.splits: must be [train, eval] (original format), '
        '[train, eval, test] or an object (got ["train"])']
    assert not out.exists()
    proc = migrate(str(src / "nope.json"), str(CONFIG / "default.json"), "--out", str(CONFIG), cwd=tmp_path)
    assert proc.returncode == 2
    # problems are listed sorted by file, wherever the checkout and the temp folder happen to be
    expected = sorted([f"{src}/nope.json: not found", f"{CONFIG}/default.json: is in the --out folder: migrating would "
                       "overwrite it; choose another --out"])
    assert proc.stderr.splitlines() == ["error: " + expected[0], expected[1]]


def test_config_validate_recognises_the_legacy_database_and_grid():
    proc = run("-m", "finetune", "config", "validate", "config/language-database.json", "config/grid-search.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("ok: config/language-database.json: database with 4 languages\n"
                           "ok: config/grid-search.json: grid\n")
