"""Where a trial's inputs are, and whether they exist: dataset folders and split files, hub
snapshots in the cache dir, tokenizer files. Paths and file tests only, no loading and no heavy
imports, so the login node checks a plan with the same rules the compute node loads it by
(``finetune.compute.data``, ``finetune.compute.tokenizer``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import Problem

ROLES = ("train", "eval", "test")
SPLIT_ALIASES = (("validation", "dev", "valid", "val"), ("train",), ("test",))
EXTENSIONS = {
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".csv": ("csv", {}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),  # raw text, one document per line, in a column named "text"
}


def default_cache_dir() -> Path:
    """``$FINETUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/finetune`` (``~/.cache/finetune``)."""
    env = os.environ.get("FINETUNE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "finetune"


def resolve_cache_dir(trial_config: dict[str, Any] | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The argument, else the trial's ``data.cache_dir``, else ``default_cache_dir()``."""
    if cache_dir is not None:
        return Path(cache_dir)
    configured = ((trial_config or {}).get("data") or {}).get("cache_dir")
    return Path(configured) if configured else default_cache_dir()


CACHE_DIR_PATH = "$.data.cache_dir"


def unwritable_cache_dir(cache: str | os.PathLike[str]) -> str | None:
    """Why the cache folder ``cache`` cannot be made or written, or None when it can.

    File tests only (the login node creates nothing): the folder, or its nearest existing
    ancestor when it does not exist yet (the trial makes it), must be a folder this user may
    write in. Catches a file where a folder is expected, a read-only mount, an immutable folder
    and missing permissions; the compute node tries a real write too
    (``finetune.compute.data.writable_cache_dir``)."""
    path = Path(os.path.abspath(cache))
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    prefix = "" if existing == path else f"cannot be made: {existing} "
    if not existing.is_dir():
        return f"{prefix}is {'a file' if existing.exists() else 'a broken link'}, not a folder"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return prefix + ("is on a read-only file system" if read_only else "is not writable by this user")


def cache_dir_message(cache: str | os.PathLike[str], reason: str, configured: bool) -> str:
    """The message for an unusable cache folder (``configured``: set by ``data.cache_dir``)."""
    if configured:
        return f"the cache folder {cache} {reason}: set data.cache_dir to a folder you can write"
    return (f"data.cache_dir is not set and the default cache folder {cache} ($FINETUNE_CACHE_DIR, else "
            f"$XDG_CACHE_HOME/finetune or ~/.cache/finetune) {reason}: set data.cache_dir to a folder you can write")


def dataset_label(entry: dict[str, Any]) -> str:
    """How errors name a dataset: its local folder, or ``hub-id (subset)``."""
    folder = local_folder(entry)
    if folder is not None:
        return str(folder)
    name = str(entry.get("dataset"))
    return f"{name} ({entry['subset']})" if entry.get("subset") else name


def local_folder(entry: dict[str, Any]) -> Path | None:
    """The folder an entry's data lives in, or None for a hub dataset.

    ``"path"`` (the resolved mirror or local path) wins; a mirror root holding ``<subset>/``
    is descended into. A ``"dataset"`` that names an existing folder is local too.
    """
    raw = entry.get("path")
    if not raw:
        dataset = entry.get("dataset")
        if dataset and Path(dataset).is_dir():
            raw = dataset
    if not raw:
        return None
    folder = Path(raw)
    subset = entry.get("subset")
    if subset and (folder / subset).is_dir():
        folder = folder / subset
    return folder


def hub_snapshot(entry: dict[str, Any], cache_dir: str | os.PathLike[str]) -> Path:
    """Where ``finetune prefetch`` saves a hub dataset (``save_to_disk``) for offline nodes."""
    key = digest("hub", entry.get("dataset"), entry.get("subset"))
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(entry.get("dataset")))
    return Path(cache_dir) / "hub" / f"{name}-{entry.get('subset') or 'default'}-{key[:12]}"


def split_candidates(split: str) -> tuple[str, ...]:
    """``split`` and its aliases, ``split`` first."""
    for group in SPLIT_ALIASES:
        if split in group:
            return (split,) + tuple(s for s in group if s != split)
    return (split,)


def find_split_file(folder: Path, split: str) -> Path | None:
    """``folder/<split or alias>.<ext>`` for the first alias and extension that exists."""
    for name in split_candidates(split):
        for ext in EXTENSIONS:
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _available_splits(folder: Path) -> list[str]:
    return sorted({p.name[: -len(ext)] for ext in EXTENSIONS for p in folder.glob(f"*{ext}")})


def is_saved_dataset_dict(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file()


def entry_splits(entry: dict[str, Any], roles: Iterable[str] = ROLES) -> dict[str, str]:
    """role -> split name, for the roles the entry has (``test`` is optional)."""
    splits = entry.get("splits") or {}
    out = {}
    for role in roles:
        name = splits.get(role)
        if name:
            out[role] = str(name)
        elif role == "train":
            out[role] = "train"
        elif role == "eval":
            out[role] = "validation"
    return out


def split_problems(entry: dict[str, Any], roles: Iterable[str], *, where: str) -> list[Problem]:
    """Cheap check (no loading) that a local entry's folder and split files exist.

    Hub datasets cannot be checked without the network: they give no problems here.
    """
    folder = local_folder(entry)
    if folder is None:
        return []
    label = dataset_label(entry)
    if not folder.is_dir():
        return [Problem(label, f"{where}.path", "dataset folder not found")]
    if is_saved_dataset_dict(folder):
        try:
            names = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        except (OSError, ValueError, AttributeError):
            return [Problem(label, where, "unreadable dataset_dict.json")]
        problems = []
        for role, split in entry_splits(entry, roles).items():
            if not any(c in names for c in split_candidates(split)):
                problems.append(
                    Problem(label, f"{where}.splits.{role}", f"split {split!r} not found (has: {', '.join(names)})")
                )
        return problems
    problems = []
    for role, split in entry_splits(entry, roles).items():
        if find_split_file(folder, split) is None:
            problems.append(Problem(label, f"{where}.splits.{role}", _missing_split_message(folder, split)))
    return problems


def _missing_split_message(folder: Path, split: str) -> str:
    names = "/".join(split_candidates(split))
    exts = ",".join(e.lstrip(".") for e in EXTENSIONS)
    found = ", ".join(_available_splits(folder)) or "no split files"
    return f"split {split!r} not found: no {names}.{{{exts}}} in {folder} (has: {found})"


def digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def trial_languages(trial_config: dict[str, Any]) -> list[str]:
    """The trial's languages, train languages first, each once."""
    seen: dict[str, None] = {}
    for lang in list(trial_config.get("train_languages", [])) + list(trial_config.get("eval_languages", [])):
        seen.setdefault(lang, None)
    return list(seen)


def config_file(trial_config: dict[str, Any]) -> str:
    """How errors name a trial config: ``<plan_dir>/trials/<id>/config.json`` when known."""
    if trial_config.get("plan_dir") and trial_config.get("id"):
        return str(layout.config_file(layout.trial_dir(trial_config["plan_dir"], str(trial_config["id"]))))
    return "trial config"


# -- tokenizers -------------------------------------------------------------------------------


def tokenizer_files(prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``<prefix>-vocab.json`` and ``<prefix>-merges.txt``."""
    prefix = str(prefix)
    return Path(prefix + "-vocab.json"), Path(prefix + "-merges.txt")


def tokenizer_kind(path: str | os.PathLike[str]) -> str:
    """``"prefix"`` (vocab/merges), ``"dir"`` or ``"json"`` (a tokenizer.json), from what exists.

    vocab/merges files win: in nanoGPT's layout ``<prefix>`` is often also the checkpoint's
    directory (``models/rus-pol-normal/ckpt.pt`` beside ``models/rus-pol-normal-vocab.json``).
    """
    p = Path(path)
    if any(f.is_file() for f in tokenizer_files(path)):
        return "prefix"
    if p.is_dir():
        return "dir"
    if p.is_file() and p.suffix == ".json":
        return "json"
    return "prefix"


def tokenizer_problems(path: str | os.PathLike[str], *, source: str = "tokenizer") -> list[Problem]:
    """What is missing for ``load_tokenizer(path)``; empty when it can load (no heavy imports)."""
    kind = tokenizer_kind(path)
    if kind == "dir":
        p = Path(path)
        if not any((p / n).is_file() for n in ("tokenizer.json", "vocab.json")):
            return [Problem(source, "", f"{p}: directory has no tokenizer.json (nor vocab.json/merges.txt)")]
        return []
    if kind == "json":
        return []
    missing = [f for f in tokenizer_files(path) if not f.is_file()]
    return [Problem(source, "", f"{f}: tokenizer file not found") for f in missing]
