"""Where the files the tool reads besides its code are: the config layers it ships (default.json,
the language database, example layers and grids) and the sbatch templates.

They have one copy, at the top of the repository (``config/``, ``jobs/templates/``), where users
read them and pass them on the command line. A wheel carries them as package data under
``finetune/_shipped/`` (``setup.py`` copies them at build time), so an installed tool finds them
without a checkout; run from a checkout (editable install, ``PYTHONPATH``) the tool reads the
checkout's own files. This module is the only code that knows either place.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # finetune/
INSTALLED = PACKAGE / "_shipped"  # in a wheel: config/ and templates/
CHECKOUT = {"config": PACKAGE.parent / "config", "templates": PACKAGE.parent / "jobs" / "templates"}

DEFAULT_CONFIG = "default.json"
ARRAY_TEMPLATE = "array.sbatch.j2"
SEARCH_TEMPLATE = "search.sbatch.j2"


def _dir(name: str) -> Path:
    installed = INSTALLED / name
    return installed if installed.is_dir() else CHECKOUT[name]


def config_dir() -> Path:
    """The shipped config layers: ``default.json``, ``language-database.json``, grids, examples."""
    return _dir("config")


def templates_dir() -> Path:
    """The shipped sbatch templates."""
    return _dir("templates")


def config_file(name: str = DEFAULT_CONFIG) -> Path:
    return config_dir() / name


def template(name: str = ARRAY_TEMPLATE) -> Path:
    return templates_dir() / name
