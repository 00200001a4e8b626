"""Atomic writes and JSON/JSON5 reading with file, line and column in every error."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, Problem, UsageError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    with _atomic_file(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike[str], mode: str, **open_kw: Any) -> Iterator[Any]:
    """An open temporary file beside ``path`` that replaces it (fsynced) when the block ends
    without an error and is removed otherwise: the one mechanism behind every atomic file write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
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


@contextlib.contextmanager
def atomic_text_writer(path: str | os.PathLike[str]) -> Iterator[Any]:
    """A text file (UTF-8) that replaces ``path`` atomically when the block ends without an error,
    for output too big to build as one string first (collect's tables of 100k trials)."""
    with _atomic_file(path, "w", encoding="utf-8", newline="") as f:
        yield f


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh folder beside ``out``; on success it replaces ``out`` whole, on any error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

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
    except RecursionError:
        raise ConfigError(problems=[Problem(str(path), "", TOO_DEEP)]) from None


def read_json5(path: str | os.PathLike[str], object_pairs_hook: Any = None) -> Any:
    """Read a human-written config: JSON plus // and /* */ comments and trailing commas.

    Uses the maintained ``json5`` package; a syntax error names the file, line and column.
    """
    import json5

    path = Path(path)
    text = _read_text(path)
    try:
        data = json5.loads(text, object_pairs_hook=object_pairs_hook) if object_pairs_hook else json5.loads(text)
    except RecursionError:
        raise ConfigError(problems=[Problem(str(path), "", TOO_DEEP)]) from None
    except ValueError as e:
        raise ConfigError(problems=[Problem(str(path), "", f"invalid JSON: {_json5_position(text, e)}")]) from None
    check_config_values(data, str(path))
    return data


TOO_DEEP = "nested too deeply to be a config"


class DuplicateKeys:
    """``object_pairs_hook`` that records keys given twice in one object (JSON merges them silently)."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                self.keys.append(k)
            seen.add(k)
        return dict(pairs)

    def problems(self, path: str, text: str) -> list[Problem]:
        import re

        out = []
        for key in dict.fromkeys(self.keys):
            hits = [m.start() for m in re.finditer(r'(["\']?)' + re.escape(key) + r"\1\s*:", text)]
            line = text.count("\n", 0, hits[1]) + 1 if len(hits) > 1 else None
            where = f"line {line}: " if line else ""
            out.append(Problem(path, "", f"{where}key {key!r} appears twice in one object (say it once)"))
        return out
MAX_DEPTH = 100


def config_value_problems(data: Any, source: str, root: str = "$") -> list[Problem]:
    """What a human-written config value must not hold: NaN or Infinity (JSON has neither; the plan
    and its ids cannot hold them), nesting deeper than ``MAX_DEPTH``. Iterative: any depth is safe."""
    import math

    out: list[Problem] = []
    stack: list[tuple[Any, str, int]] = [(data, root, 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            out.append(Problem(source, where, f"{value} is not a number JSON allows (NaN and Infinity are not)"))
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                out.append(Problem(source, where, TOO_DEEP + f" (more than {MAX_DEPTH} levels)"))
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                child = f"{where}[{k}]" if isinstance(k, int) else (
                    f"{where}.{k}" if str(k).isidentifier() else f"{where}[{json.dumps(k)}]")
                stack.append((v, child, depth + 1))
    return out


def check_config_values(data: Any, source: str, root: str = "$") -> None:
    problems = config_value_problems(data, source, root)
    if problems:
        raise ConfigError(problems=problems)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(problems=[Problem(str(path), "", f"not UTF-8 text: {e.reason} at byte {e.start}")]) from None
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
