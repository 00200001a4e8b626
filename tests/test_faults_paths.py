"""Issue 14, paths: an unusable data.cache_dir is named as such (at submit, before anything is
written, and by the trial itself), made unwritable for real (a file in the way, a read-only mount,
an unprivileged user), since root writes anywhere; and a `$` in any path (plan folder, checkpoint
folder, hub-snapshot style tokenizer folder, load_from_disk dataset folders, the cache) is taken
literally from plan to evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"
LAYERS = [str(CONFIG / n) for n in ("finetune-rus-pol.json", "finetune-rus-pol-topic.json", "data-local.json")]
SMALL = ["--set", "hyperparameters.max_steps=2", "--set", "training.eval_interval=2",
         "--set", "training.max_eval_samples=8", "--set", "training.device=cpu"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def finetune(*args: str, prefix: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "finetune", *args], capture_output=True, text=True,
                          timeout=300, **{"env": env(), **kw})


def copy_models(tiny: tuple[Path, Path], models: Path) -> list[str]:
    """The tiny checkpoint folder and its vocab/merges files under ``models``; the --set flags naming them."""
    ckpt, prefix = tiny
    shutil.copytree(ckpt.parent, models / "tiny")
    for f in Path(prefix).parent.glob(Path(prefix).name + "-*"):
        shutil.copy(f, models / f.name)
    return ["--set", f"checkpoints.prefix={models}", "--set", "checkpoints.normal=tiny",
            "--set", f"tokenizers.prefix={models}", "--set", "tokenizers.normal_prefix=tiny"]


def plan_with_cache(root: Path, models: list[str], cache: str) -> tuple[Path, Path]:
    """A one-trial plan whose layer ``root/cache.json`` sets data.cache_dir to ``cache``."""
    layer = root / "cache.json"
    layer.write_text(json.dumps({"data": {"cache_dir": cache}}))
    plan = root / "plan"
    done = finetune("plan", *LAYERS, str(layer), *models, *SMALL, "--model-type", "normal", "--no-submit",
                    "-o", str(plan))
    assert done.returncode == 0, done.stderr
    return layer, plan


def nothing_submitted(plan: Path) -> bool:
    return not (plan / "manifest.json").exists() and not (plan / "trials").exists() and not (plan / "jobs").exists()


def test_an_unwritable_cache_dir_is_named_at_submit_and_by_the_trial(tmp_path, tiny_pretrained):  # noqa: F811
    models = copy_models(tiny_pretrained, tmp_path / "models")
    # 1. a file where the cache folder (or one above it) should be
    (tmp_path / "blocked").write_text("a file, not a folder\n")
    layer, plan = plan_with_cache(tmp_path, models, "blocked/cache")
    cache = tmp_path / "blocked" / "cache"
    done = finetune("submit", str(plan), "--executor", "local")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (f"{layer}: $.data.cache_dir: the cache folder {cache} cannot be made: {tmp_path / 'blocked'} is a file, "
            "not a folder: set data.cache_dir to a folder you can write (needed by trial") in done.stderr
    assert "splits" not in done.stderr  # not blamed on a dataset split
    assert nothing_submitted(plan)
    dry = finetune("submit", str(plan), "--executor", "local", "--dry-run")  # lists it, refuses nothing
    assert dry.returncode == 0 and "$.data.cache_dir" in dry.stdout + dry.stderr, dry.stdout + dry.stderr

    # the trial itself (its config frozen by hand, as an older submit did): data.cache_dir, not a split
    from finetune.login.plan import materialize_trials

    (config,) = materialize_trials(plan)
    trial = config.parent
    run = finetune("train", str(trial))
    log = (trial / "log.txt").read_text() if (trial / "log.txt").exists() else ""
    assert run.returncode == 2 and "Traceback" not in run.stderr + log, run.stderr + log
    message = f"$.data.cache_dir: the cache folder {cache} cannot be written (Not a directory"
    assert message in run.stderr + log and "splits" not in run.stderr + log, run.stderr + log
    state = json.loads((trial / "state.json").read_text())
    assert state["state"] == "failed" and "data.cache_dir" in state["reason"], state


def test_a_cache_dir_on_a_read_only_mount_is_refused_at_submit(tmp_path, tiny_pretrained):  # noqa: F811
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.fail("unshare -m is needed to mount a read-only tmpfs for this test")
    models = copy_models(tiny_pretrained, tmp_path / "models")
    ro = tmp_path / "ro"
    ro.mkdir()
    layer, plan = plan_with_cache(tmp_path, models, str(ro / "cache"))
    script = (f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && "
              f"exec {sys.executable} -m finetune submit {plan} --executor local")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (f"{layer}: $.data.cache_dir: the cache folder {ro / 'cache'} cannot be made: {ro} is on a read-only "
            "file system") in done.stderr
    assert nothing_submitted(plan)


def test_a_cache_dir_this_user_cannot_write_is_refused_at_submit(tiny_pretrained):  # noqa: F811
    root = Path(tempfile.mkdtemp(prefix="ft-cache-", dir="/tmp"))  # pytest's tmp is root-only
    try:
        os.chmod(root, 0o755)
        models = copy_models(tiny_pretrained, root / "models")
        (root / "cache").mkdir(mode=0o755)  # root's: the unprivileged user may read it, not write
        layer, plan = plan_with_cache(root, models, str(root / "cache"))
        for p in [root, *root.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        for p in [plan, *plan.rglob("*")]:
            os.chown(p, 65534, 65534)  # the plan folder is the user's own
        nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        done = finetune("submit", str(plan), "--executor", "local", prefix=nobody,
                        env=env(HOME=str(root), MPLCONFIGDIR=str(root)))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert (f"{layer}: $.data.cache_dir: the cache folder {root / 'cache'} is not writable by this user: "
                "set data.cache_dir to a folder you can write") in done.stderr
        assert not (plan / "manifest.json").exists() and not (plan / "trials").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- item 8: a `$` in any path is that character, end to end ------------------------------------------


def sib_dataset_dict(subset: str, rows: int = 40):
    """The first rows of the real SIB-200 splits of ``subset`` as a DatasetDict (train/validation/test)."""
    import csv

    import datasets

    out = {}
    for split, name in (("train", "train"), ("dev", "validation"), ("test", "test")):
        with open(REPO / "data" / "sib200" / subset / f"{split}.tsv", encoding="utf-8", newline="") as f:
            kept = list(csv.DictReader(f, delimiter="\t"))[: rows if split == "train" else 12]
        out[name] = datasets.Dataset.from_dict({k: [r[k] for r in kept] for k in ("index_id", "category", "text")})
    return datasets.DatasetDict(out)


def hub_style_tokenizer(prefix: Path, repo: Path) -> Path:
    """The tokenizer at ``prefix`` saved as a hub snapshot lays it out: ``snapshots/<rev>/<file>`` are
    symlinks into ``blobs/``. Returns the snapshot folder."""
    from finetune.compute.tokenizer import load_tokenizer

    plain = repo / "plain"
    load_tokenizer(prefix).save_pretrained(str(plain))
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for n, f in enumerate(sorted(plain.iterdir())):
        blob = repo / "blobs" / f"blob{n}"
        f.rename(blob)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    plain.rmdir()
    return snapshot


def test_dollar_paths_are_literal_from_plan_to_evaluate(tmp_path, tiny_pretrained):  # noqa: F811
    """Paths holding $HOME, ${X} and $(cmd) (plan folder, nanoGPT checkpoint folder, a hub-snapshot
    style tokenizer folder of symlinks, load_from_disk dataset folders, a prefetched hub dataset in
    the cache, the cache itself) are planned, checked, trained on and evaluated as written: nothing
    expands them and no shell runs them (the $(touch ...) would leave a file)."""
    from finetune.login.inputs import hub_snapshot

    ckpt, prefix = tiny_pretrained
    home = tmp_path / "home"
    home.mkdir()
    cmd = "$(touch pwned)"
    models = tmp_path / "models$HOME"  # the checkpoint folder (nanoGPT's out_dir)
    shutil.copytree(ckpt.parent, models / "tiny")
    snapshot = hub_style_tokenizer(prefix, tmp_path / "hub${FT_I14_X}" / "models--x--tiny")
    mirror = tmp_path / f"data$HOME{cmd}"  # load_from_disk folders: <mirror>/<subset>/dataset_dict.json
    sib_dataset_dict("rus_Cyrl").save_to_disk(str(mirror / "rus_Cyrl"))
    cache = tmp_path / "cache$HOME${FT_I14_X}"
    polish = {"dataset": "example/sib-pl", "subset": "pol_Latn"}  # a hub dataset `finetune prefetch` saved
    sib_dataset_dict("pol_Latn").save_to_disk(str(hub_snapshot(polish, cache)))
    entry = {"train_features": ["text"], "eval_feature": "category",
             "splits": {"train": "train", "eval": "validation", "test": "test"}, "task_type": "classification",
             "classes": 7, "labels": ["science/technology", "travel", "politics", "sports", "health",
                                      "entertainment", "geography"], "filter_length": False}
    (tmp_path / "db.json").write_text(json.dumps({
        "russian": {"espeak": "ru", "topic": {"sib200": {"dataset": "Davlan/sib200", "subset": "rus_Cyrl", **entry}}},
        "polish": {"espeak": "pl", "topic": {"sib200": {**polish, **entry}}}}))
    layer = tmp_path / "paths.json"
    layer.write_text(json.dumps({
        "database": "db.json", "data": {"mirrors": {"Davlan/sib200": str(mirror)}, "cache_dir": str(cache)},
        "checkpoints": {"prefix": str(models), "normal": "tiny"},
        "tokenizers": {"prefix": str(snapshot.parent), "normal_prefix": snapshot.name}}))
    plan = tmp_path / f"run {cmd} $HOME"
    e = env(HOME=str(home), FT_I14_X="elsewhere")
    layers = [str(CONFIG / "finetune-rus-pol.json"), str(CONFIG / "finetune-rus-pol-topic.json"), str(layer)]
    steps = [["plan", *layers, *SMALL, "--model-type", "normal", "--no-submit", "-o", str(plan)],
             ["config", "validate", *layers, "--model-type", "normal"],
             ["submit", str(plan), "--executor", "local"],
             ["status", str(plan)],
             ["evaluate", str(plan), "--languages", "russian", "polish", "--threads", "1", "--executor", "local"],
             ["collect", str(plan)]]
    for args in steps:
        done = finetune(*args, env=e, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    (trial,) = (plan / "trials").iterdir()
    config = json.loads((trial / "config.json").read_text())
    assert config["checkpoint"] == str(models / "tiny" / "ckpt.pt") and config["tokenizer"] == str(snapshot)
    assert config["data"]["cache_dir"] == str(cache)
    assert config["datasets"]["russian"]["path"] == str(mirror / "rus_Cyrl")
    result = json.loads((trial / "result.json").read_text())
    assert result["trial"] == trial.name and set(result["metrics"]) == {"russian", "polish"}
    assert set(json.loads((trial / "evaluations.json").read_text())) == {"russian", "polish"}
    assert (cache / "maps").is_dir()  # the token ids went into the literal cache folder
    assert not list(tmp_path.rglob("pwned")) and not (Path.cwd() / "pwned").exists()
    # where an expansion would have led: nothing was made there
    assert not (tmp_path / "cache").exists() and not (tmp_path / "modelsr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["home", "models$HOME", "hub${FT_I14_X}", f"data$HOME{cmd}", "cache$HOME${FT_I14_X}", "db.json", "paths.json",
         f"run {cmd} $HOME"])
