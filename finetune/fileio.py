"""Atomic writes and JSON/JSON5 reading with file, line and column in every error."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, Problem, UsageError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (shared clusters).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def ensure_directory(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` (and parents) as a directory; a file in the way is a usage error naming
    ``what`` (the flag or key that gave the path), not a traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(problems=[Problem(what, "", f"{path} is not a directory (a file is in the way)")]) from None
    except OSError as e:
        raise UsageError(problems=[Problem(what, "", f"cannot create {path}: {e.strerror or e}")]) from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read strict JSON (files this tool wrote); errors name file, line and column."""
    path = Path(path)
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            problems=[Problem(str(path), "", f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")]
        ) from None


def read_json5(path: str | os.PathLike[str]) -> Any:
    """Read a human-written config: JSON plus // and /* */ comments and trailing commas.

    Uses the maintained ``json5`` package; a syntax error names the file, line and column.
    """
    import json5

    path = Path(path)
    text = _read_text(path)
    try:
        return json5.loads(text)
    except ValueError as e:
        raise ConfigError(problems=[Problem(str(path), "", f"invalid JSON: {_json5_position(text, e)}")]) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(problems=[Problem(str(path), "", f"cannot read: {e.strerror or e}")]) from None


def _json5_position(text: str, err: ValueError) -> str:
    """json5 reports '<string>:LINE Unexpected ... at column COL'; normalise to our wording."""
    import re

    msg = str(err)
    m = re.search(r"<string>:(\d+)\s+(.*?)\s+at column (\d+)", msg)
    if m:
        return f"line {m.group(1)}, column {m.group(3)}: {m.group(2)}"
    return msg
