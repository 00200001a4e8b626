"""Shared fixtures: paths, the SIB-200 data and the real SLURM test clusters (one of each kind per session).

Area-specific fixtures live in the test modules that use them."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SIB200 = REPO / "data" / "sib200"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def config_dir() -> Path:
    return REPO / "config"


@pytest.fixture(scope="session")
def sib200_dir() -> Path:
    """The real SIB-200 subset that ships in the repository (data/sib200)."""
    if not (SIB200 / "rus_Cyrl" / "train.tsv").is_file():
        pytest.fail(f"SIB-200 data not found at {SIB200} (it ships in the repository: data/sib200)")
    return SIB200


SLURM_CLUSTER = REPO / "scripts" / "slurm-cluster.sh"


@contextlib.contextmanager
def running_cluster(root: Path, nodes: int = 1) -> Iterator[Path]:
    """Start a cluster in ``root`` with ``nodes`` slurmd; stop it (everything it started) afterwards."""
    args = ["bash", str(SLURM_CLUSTER), "start", str(root)] + (["--nodes", str(nodes)] if nodes > 1 else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240)
    try:
        if proc.returncode != 0:
            pytest.fail(f"the test SLURM cluster ({nodes} nodes) did not start:\n{proc.stdout}\n{proc.stderr}")
        yield root
    finally:
        subprocess.run(["bash", str(SLURM_CLUSTER), "stop", str(root)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def _slurm_single_session(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm")) as root:
        yield root


@pytest.fixture(scope="session")
def _slurm_multinode_session(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm-multinode"), nodes=2) as root:
        yield root


@pytest.fixture
def slurm_cluster(_slurm_single_session, monkeypatch):
    """The single-node cluster (one per session), SLURM_CONF pointing at it during the test."""
    monkeypatch.setenv("SLURM_CONF", str(_slurm_single_session / "etc" / "slurm.conf"))
    return _slurm_single_session


@pytest.fixture
def slurm_multinode(_slurm_multinode_session, monkeypatch):
    """A 2-node cluster (one per session; scripts/slurm-cluster.sh --nodes 2): nodes ftnode1 and
    ftnode2, each slurmd in its own network, UTS and mount namespace with its own hostname and
    address; SLURM_CONF points at it during the test."""
    monkeypatch.setenv("SLURM_CONF", str(_slurm_multinode_session / "etc" / "slurm.conf"))
    return _slurm_multinode_session
