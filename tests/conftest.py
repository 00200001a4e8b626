"""Shared fixtures. Area-specific fixtures live in the test modules that use them."""

from __future__ import annotations

import os
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
