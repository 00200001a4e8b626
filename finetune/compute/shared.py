"""What the trials of one bundle share: the loaded tokenizer, pretrained checkpoint and datasets.

A bundle (``slurm.trials_per_task`` > 1, finetune.compute.bundle) runs its trials one after
another in one process; most of them read the same inputs (a grid of learning rates and seeds
over one checkpoint and one dataset). ``run_bundle`` turns this cache on, and the trainer asks it
for each input by a key made of the resolved input (absolute paths and the dataset entries) and
the files' fingerprints (size and modification time of every file read): the second trial that
asks for the same key gets the object the first loaded; a trial of other inputs, or whose files
changed in between (pretrained again), loads afresh. One entry per kind is kept (the latest), so a
bundle of many different inputs holds no more than one of each in memory.

Off (a trial on its own) nothing is kept: a single trial frees its checkpoint's tensors as soon
as the model holds them, as before.

Shared objects are read, never changed: the model copies the checkpoint's tensors
(``load_state_dict``), the tokenizer is only called, and datasets are immutable arrow tables.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_state: dict[str, Any] = {"on": False, "loads": {}}
_cache: dict[str, tuple[Any, Any]] = {}  # kind -> (key, value): the latest of each kind


def enable(on: bool = True) -> None:
    """Keep loaded inputs for the next trial of this process (``run_bundle``); off clears them."""
    _state["on"] = on
    if not on:
        _cache.clear()


def enabled() -> bool:
    return bool(_state["on"])


def loads() -> dict[str, int]:
    """How many times each kind was loaded (not taken from the cache) in this process."""
    return dict(_state["loads"])


def cached(kind: str, key: Any, make: Callable[[], T]) -> T:
    """``make()``, or what it returned for the same ``kind`` and ``key`` before (when enabled)."""
    if _state["on"]:
        hit = _cache.get(kind)
        if hit is not None and hit[0] == key:
            return hit[1]
        _cache.pop(kind, None)  # the old one goes before the new one is loaded
    value = make()
    _state["loads"][kind] = _state["loads"].get(kind, 0) + 1
    if _state["on"]:
        _cache[kind] = (key, value)
    return value


def _stat(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size, st.st_mtime_ns)


def files_key(path: str | os.PathLike[str] | None) -> tuple:
    """The fingerprint of what ``path`` names: a file, every file under a folder, or every file
    that starts with a prefix (a tokenizer's ``<prefix>-vocab.json`` and ``-merges.txt``)."""
    if path is None:
        return ()
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        found = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
    elif os.path.isfile(path):
        found = [path]
    else:
        found = glob.glob(glob.escape(path) + "*")
    return (path, tuple(s for f in sorted(found) if (s := _stat(f)) is not None))


def tokenizer_key(config: dict[str, Any]) -> tuple:
    return ("tokenizer", files_key(config.get("tokenizer")))


def checkpoint_key(path: str | os.PathLike[str]) -> tuple:
    return ("checkpoint", files_key(path))


def data_key(config: dict[str, Any], block_size: int, **extra: Any) -> tuple:
    """A trial's datasets: its languages' resolved entries, model type, languages, tokenizer,
    block size, cache folder and ``extra`` (e.g. QA's doc_stride), with the local folders' files."""
    entries = config.get("datasets") or {}
    described = json.dumps({"datasets": entries, "model_type": config.get("model_type"),
                            "train": config.get("train_languages"), "eval": config.get("eval_languages"),
                            "block_size": block_size, "cache_dir": (config.get("data") or {}).get("cache_dir"),
                            "extra": extra}, sort_keys=True, default=str)
    folders = tuple(files_key(e.get("path")) for e in entries.values() if isinstance(e, dict) and e.get("path"))
    return ("data", described, tokenizer_key(config), folders)
