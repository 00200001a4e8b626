"""Shared fixtures: paths, the SIB-200 data and the one real SLURM cluster of a test session.

Area-specific fixtures live in the test modules that use them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _sib200() -> Path:
    env = os.environ.get("FINETUNE_SIB200")
    return Path(env) if env else (REPO.parent / "shared" / "data" / "sib200")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def config_dir() -> Path:
    return REPO / "config"


@pytest.fixture(scope="session")
def sib200_dir() -> Path:
    """The real SIB-200 subset that ships beside the repo (../shared/data/sib200)."""
    path = _sib200()
    if not (path / "rus_Cyrl" / "train.tsv").is_file():
        pytest.fail(f"SIB-200 data not found at {path} (set FINETUNE_SIB200)")
    return path


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Start the cluster, export SLURM_CONF for this process, stop it at the end of the session."""
    root = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "slurm-cluster.sh"
    proc = subprocess.run(["bash", str(script), "start", str(root)], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        subprocess.run(["bash", str(script), "stop", str(root)], capture_output=True, timeout=120)
        pytest.fail(f"the test SLURM cluster did not start:\n{proc.stdout}\n{proc.stderr}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(root / "etc" / "slurm.conf")
    try:
        yield root
    finally:
        subprocess.run(["bash", str(script), "stop", str(root)], capture_output=True, timeout=120)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
