"""A wheel built from this checkout works without it.

The wheel is built from a copy of the sources (``pip wheel``, no network), installed into a fresh
venv that holds nothing but it and the light dependencies a login node installs (jinja2,
jsonschema, json5 and theirs, reached through a .pth file: no torch, no checkout, no editable
finder), and run from a folder outside the checkout: the shipped default layer, language
database and sbatch templates must come from the installed package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "finetune", "config", "jobs")
# what `pip install finetune` (no extras) brings: install_requires and their dependencies
LIGHT = ("jinja2", "markupsafe", "jsonschema", "jsonschema_specifications", "referencing", "rpds", "attrs", "attr",
         "json5", "typing_extensions")
SHIPPED = {"config": sorted(p for p in (REPO / "config").glob("*.json")),
           "templates": sorted(p for p in (REPO / "jobs" / "templates").iterdir() if p.is_file())}
LAYER = {"datasets": {"russian": "sib200", "polish": "sib200"},
         "checkpoints": {"prefix": "models", "normal": "rus-pol-normal", "ipa": "rus-pol-ipa"},
         "tokenizers": {"prefix": "models", "normal_prefix": "rus-pol-normal", "ipa_prefix": "rus-pol-ipa"}}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _env() -> dict[str, str]:
    """This environment without anything that would put the checkout on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def _run(argv: list[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_shipped", "*.egg-info", "build")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = root / "dist"
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                 "-w", str(dist), str(src)], cwd=root)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = dist.glob("finetune-*.whl")

    venv = root / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=root).stdout.strip())
    deps = root / "deps"  # the light dependencies only, linked from this environment
    deps.mkdir()
    for name in LIGHT:
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"{name} is not installed here"
        found = Path(spec.submodule_search_locations[0] if spec.submodule_search_locations else spec.origin)
        (deps / found.name).symlink_to(found)
    (purelib / "light-deps.pth").write_text(f"{deps}\n")
    proc = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                 str(wheel)], cwd=root)
    assert proc.returncode == 0, proc.stderr
    work = root / "work"  # outside the checkout
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "purelib": purelib, "work": work}


def test_the_wheel_carries_the_shipped_files_as_they_are_in_the_repository(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = set(whl.namelist())
        for folder, files in SHIPPED.items():
            assert files
            shipped = {n for n in names if n.startswith(f"finetune/_shipped/{folder}/")}
            assert shipped == {f"finetune/_shipped/{folder}/{f.name}" for f in files}
            for f in files:  # one source of truth: the copies are the repository's files
                assert whl.read(f"finetune/_shipped/{folder}/{f.name}") == f.read_bytes(), f
        assert {"finetune/login/schemas/config.schema.json", "finetune/py.typed"} <= names
        assert not any(n.startswith("data/") or "sib200/" in n for n in names)  # demo data stay in the repo


def test_the_installed_package_is_the_one_imported_without_the_checkout(installed):
    code = ("import json, sys, importlib.util, finetune\n"
            "from finetune.login import shipped\n"
            "from finetune.login.layers import SHIPPED_DEFAULT\n"
            "from finetune.login.submit import DEFAULT_TEMPLATE\n"
            "print(json.dumps({'file': finetune.__file__, 'path': sys.path, 'default': str(SHIPPED_DEFAULT),\n"
            "                  'template': str(DEFAULT_TEMPLATE), 'config': str(shipped.config_dir()),\n"
            "                  'torch': importlib.util.find_spec('torch') is not None}))")
    proc = _run([str(installed["python"]), "-c", code], cwd=installed["work"])
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    package = installed["purelib"] / "finetune"
    assert Path(seen["file"]) == package / "__init__.py"
    assert not [p for p in seen["path"] if p and Path(p).resolve().is_relative_to(REPO)]
    assert seen["torch"] is False  # a login node's install: the light dependencies only
    assert Path(seen["default"]) == package / "_shipped" / "config" / "default.json"
    assert Path(seen["template"]) == package / "_shipped" / "templates" / "array.sbatch.j2"
    assert Path(seen["config"]) == package / "_shipped" / "config"


def test_a_dry_run_outside_the_checkout_renders_the_default_template(installed):
    work = installed["work"]
    (work / "layer.json").write_text(json.dumps(LAYER))
    finetune = str(installed["venv"] / "bin" / "finetune")
    proc = _run([finetune, "plan", "layer.json", "-o", "out", "--dry-run", "--executor", "slurm",
                 "--max-array-size", "100"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("planned 2 trials (normal: 1, ipa: 1) in out")
    assert "checkpoint not found" in proc.stderr  # listed as warnings by a dry run
    (script,) = (work / "out" / "jobs").rglob("*.sbatch")
    text = script.read_text()
    template = (REPO / "jobs" / "templates" / "array.sbatch.j2").read_text()
    assert text.splitlines()[2] == template.splitlines()[2] == (  # the shipped template's own comment line
        "# Rendered by finetune.login.render (jinja2, StrictUndefined); every value below is shell-quoted.")
    assert "#SBATCH --signal=B:USR2@120" in text and "#SBATCH --time=04:00:00" in text  # default.json's slurm
    assert f"{installed['python']} -m finetune train" in text
    assert not (work / "out" / "trials").exists()  # the array tasks make the trial folders
    (index,) = (work / "out" / "jobs").rglob("*.index")
    assert len(index.read_text().splitlines()) == 2 and list((work / "out" / "jobs").rglob("groups.json"))
    # every value not set by the layer came from the installed default.json and database
    proc = _run([finetune, "config", "show", "layer.json", "--explain", "--resolved"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    shipped = installed["purelib"] / "finetune" / "_shipped" / "config"
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert any(line.startswith('"dropout": 0.1') and line.endswith(f"// {shipped / 'default.json'}") for line in lines)
    assert any(line.startswith(f'"database": "{shipped / "language-database.json"}"') for line in lines)


def test_the_demo_from_a_wheel_says_it_needs_a_clone(installed):
    out = installed["work"] / "demo"
    proc = _run([str(installed["venv"] / "bin" / "finetune"), "demo", "--size", "tiny", "--out", str(out)],
                cwd=installed["work"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the demo runs from a clone of the repository" in proc.stderr and "data/sib200" in proc.stderr
    assert not out.exists()
