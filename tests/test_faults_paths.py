"""Issue 14, paths: an unusable data.cache_dir is named as such (at submit, before anything is
written, and by the trial itself), made unwritable for real (a file in the way, a read-only mount,
an unprivileged user), since root writes anywhere."""

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
