"""Every shipped config in config/ is valid, and the shipped layers combine as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.login.database import load_database
from finetune.login.layers import read_config_file
from finetune.login.plan import build_plan
from finetune.login.schema import load_schema, validate

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"
SHIPPED = sorted(p.name for p in CONFIG.glob("*.json"))
PAIR, TASK, LOCAL, HUB = (str(CONFIG / n) for n in ("finetune-rus-pol.json", "finetune-rus-pol-topic.json",
                                                       "data-local.json", "data-hub.json"))
LANGUAGES = {"russian": "rus_Cyrl", "polish": "pol_Latn", "czech": "ces_Latn", "slovak": "slk_Latn",
             "ukrainian": "ukr_Cyrl", "belarusian": "bel_Cyrl", "bulgarian": "bul_Cyrl", "english": "eng_Latn"}


def kind_of(name: str) -> str:
    schema = read_config_file(CONFIG / name)["$schema"]
    return Path(schema).name.split(".")[0]


def test_the_expected_configs_ship():
    assert {"default.json", "language-database.json", "data-local.json", "data-hub.json", "finetune-rus-pol.json",
            "finetune-rus-pol-topic.json", "grid-search.json", "grid-demo.json"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_schema_reference_resolves_for_editors(name):
    schema = read_config_file(CONFIG / name)["$schema"]
    assert (CONFIG / schema).resolve().is_file(), schema
    assert kind_of(name) in ("config", "database", "grid")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_validates(name):
    kind = kind_of(name)
    if kind == "database":
        db = load_database(CONFIG / name)
        assert sorted(db.languages()) == sorted(LANGUAGES)
    elif kind == "grid":
        plan = build_plan([PAIR, TASK, LOCAL], grid_config=str(CONFIG / name))
        assert plan.trials or plan.search  # a search plans no trials up front
        assert validate("grid", read_config_file(CONFIG / name), name) == []
    else:
        plan = build_plan([str(CONFIG / name), PAIR, TASK])  # first, so the pair and task layers complete it
        assert plan.counts() == {"normal": 1, "ipa": 1}


def test_default_sets_every_key_of_the_schema():
    default = read_config_file(CONFIG / "default.json")
    props = load_schema("config")["properties"]
    for section in ("hyperparameters", "training", "slurm", "data", "wandb"):
        assert sorted(default[section]) == sorted(props[section]["properties"]), section


def test_database_matches_the_local_sib200_copy(sib200_dir):
    db = load_database(CONFIG / "language-database.json")
    for language, subset in LANGUAGES.items():
        entry = db.entry(language, "topic", "sib200")
        assert entry["dataset"] == "Davlan/sib200" and entry["subset"] == subset
        assert entry["labels"] == (sib200_dir / subset / "labels.txt").read_text().split()
        assert entry["classes"] == 7 and entry["filter_length"] is False
        assert entry["splits"] == {"train": "train", "eval": "validation", "test": "test"}
    assert db.espeak("english") == "en-us" and db.espeak("russian") == "ru"


def test_one_layer_switches_between_local_copy_and_hub(sib200_dir):
    hub = build_plan([PAIR, TASK])  # default: the hub
    local = build_plan([PAIR, TASK, LOCAL])
    back = build_plan([PAIR, TASK, LOCAL, HUB])
    assert [t.id for t in hub.trials] == [t.id for t in local.trials] == [t.id for t in back.trials]

    def path(plan, lang):
        return next(iter(plan.groups.values()))["datasets"][lang]["path"]

    assert path(hub, "russian") is None and path(back, "russian") is None
    assert Path(path(local, "russian")).resolve() == (sib200_dir / "rus_Cyrl").resolve()
    assert (Path(path(local, "polish")) / "train.tsv").is_file()


def test_shipped_grid_counts():
    assert build_plan([PAIR, TASK], grid_config=str(CONFIG / "grid-search.json")).counts() == {"normal": 6, "ipa": 6}
    demo = build_plan([PAIR, TASK, LOCAL], grid_config=str(CONFIG / "grid-demo.json"), matrix=True)
    assert demo.counts() == {"normal": 6, "ipa": 6}
    example = build_plan([PAIR, TASK], grid_config=str(CONFIG / "grid-zip-example.json"))
    assert example.counts() == {"normal": 5, "ipa": 2}
    search = build_plan([PAIR, TASK, LOCAL], grid_config=str(CONFIG / "search-demo.json")).search
    assert (search["sampler"], search["pruner"], search["trials"], search["workers"]) == ("tpe", "successive-halving", 12, 2)
    assert list(search["params"]) == ["learning_rate", "batch_size", "warmup_ratio", "model_type"]


def test_pair_layer_names_the_demo_models():
    plan = build_plan([PAIR, TASK])
    group = next(iter(plan.groups.values()))
    assert group["checkpoints"] == {"normal": str(REPO / "models" / "rus-pol-normal" / "ckpt.pt"),
                                    "ipa": str(REPO / "models" / "rus-pol-ipa" / "ckpt.pt")}
    assert group["tokenizers"] == {"normal": str(REPO / "models" / "rus-pol-normal"),
                                   "ipa": str(REPO / "models" / "rus-pol-ipa")}


def test_the_demo_data_ship_in_the_repository_with_their_attribution(sib200_dir):
    assert sib200_dir == REPO / "data" / "sib200"
    readme = (sib200_dir / "README.md").read_text(encoding="utf-8")
    for needed in ("Adelani et al.", "arXiv:2309.07445", "Apache-2.0", "FLORES-200", "CC BY-SA 4.0"):
        assert needed in readme, needed
    assert "Apache License" in (sib200_dir / "LICENSE-sib-200-repo.txt").read_text(encoding="utf-8")
    for subset in LANGUAGES.values():
        rows = {split: len((sib200_dir / subset / f"{split}.tsv").read_text(encoding="utf-8").splitlines()) - 1
                for split in ("train", "dev", "test")}
        assert rows == {"train": 701, "dev": 99, "test": 204}, subset


SKIP_DIRS = {".git", ".venv", "runs", "models", "build", "dist", ".cache", "__pycache__", ".pytest_cache",
             ".ruff_cache", "demo-out", "data"}


def test_nothing_reads_data_from_beside_the_checkout():
    """The demo data are in the repository: no file points at the old sibling folder."""
    old = "shared" + "/data"  # spelled apart so that this file does not match itself
    found = []
    for path in REPO.rglob("*"):
        if SKIP_DIRS & set(path.relative_to(REPO).parts) or not path.is_file():
            continue
        if path.suffix in (".png", ".pt", ".pyc") or path.stat().st_size > 1_000_000:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1) if old in line]
    assert found == []


def test_a_checkout_reads_its_own_shipped_files_and_setup_py_ships_the_same_folders():
    """finetune.login.shipped is the one place that knows where the shipped files are; setup.py
    copies the same folders into a wheel (tests/test_wheel.py builds one)."""
    import ast

    from finetune.login import shipped
    from finetune.login.layers import SHIPPED_DEFAULT
    from finetune.login.search_submit import SEARCH_TEMPLATE
    from finetune.login.submit import DEFAULT_TEMPLATE

    assert not shipped.INSTALLED.exists()  # only a wheel has finetune/_shipped
    assert shipped.config_dir() == CONFIG and shipped.templates_dir() == REPO / "jobs" / "templates"
    assert SHIPPED_DEFAULT == CONFIG / "default.json"
    assert DEFAULT_TEMPLATE == REPO / "jobs" / "templates" / "array.sbatch.j2" and DEFAULT_TEMPLATE.is_file()
    assert SEARCH_TEMPLATE == REPO / "jobs" / "templates" / "search.sbatch.j2" and SEARCH_TEMPLATE.is_file()
    tree = ast.parse((REPO / "setup.py").read_text())
    (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "SHIPPED" for t in node.targets)]
    setup_shipped = ast.literal_eval(value)
    assert {name: REPO / source for name, (source, _pattern) in setup_shipped.items()} == shipped.CHECKOUT
