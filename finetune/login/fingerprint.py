"""Content fingerprints of the files a trial reads (checkpoint, tokenizer, local dataset).

Trial ids cover them (finetune.login.identity), so pretraining again under the same name, or editing
a local dataset, plans new trials instead of reporting the old results as finished. Hashing a
checkpoint of gigabytes on every ``finetune plan`` would be slow, so each file's SHA-256 is cached
by (absolute path, size, modification time in ns) in one JSON file:
``$FINETUNE_FINGERPRINT_CACHE``, else ``$XDG_CACHE_HOME/finetune/fingerprints.json``, else
``~/.cache/finetune/fingerprints.json``. A file that is rewritten gets a new mtime and is hashed
again; one that is missing has the fingerprint ``"missing"`` (dry runs and prefetch report it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MISSING = "missing"
LENGTH = 16  # hex digits kept: plenty to tell two versions of one file apart


def cache_path() -> Path:
    explicit = os.environ.get("FINETUNE_FINGERPRINT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "finetune" / "fingerprints.json"


class Fingerprints:
    """Hashes files and folders through the cache; ``save()`` writes the cache once at the end."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_path()
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self.entries = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 3}
        except (OSError, ValueError):
            pass

    def file(self, path: str | os.PathLike[str]) -> str:
        """SHA-256 (first LENGTH hex digits) of one file's bytes, or MISSING."""
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
        except OSError:
            return MISSING
        cached = self.entries.get(path)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return str(cached[2])
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return MISSING
        digest = h.hexdigest()[:LENGTH]
        self.entries[path] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def folder(self, path: str | os.PathLike[str]) -> str:
        """A hash over every file below ``path`` (relative names and contents), or MISSING."""
        root = Path(path)
        if not root.is_dir():
            return MISSING
        h = hashlib.sha256()
        for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
            h.update(f"{p.relative_to(root).as_posix()}\0{self.file(p)}\n".encode())
        return h.hexdigest()[:LENGTH]

    def any(self, path: str | os.PathLike[str]) -> str:
        return self.folder(path) if Path(path).is_dir() else self.file(path)

    def tokenizer(self, path: str | os.PathLike[str]) -> str:
        """A tokenizer folder, a tokenizer.json, or a ``<prefix>-vocab.json``/``-merges.txt`` pair."""
        p = Path(path)
        if p.exists():
            return self.any(p)
        parts = [self.file(f"{p}-vocab.json"), self.file(f"{p}-merges.txt")]
        if all(x == MISSING for x in parts):
            return MISSING
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:LENGTH]

    def save(self) -> None:
        """Write the cache when something new was hashed; a read-only home only costs speed."""
        if not self.dirty:
            return
        from finetune.fileio import atomic_write_text

        try:
            atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
            self.dirty = False
        except OSError:
            pass
