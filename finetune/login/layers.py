"""Config layering: default.json, then the given files, then ``--set`` overrides.

Two phases, as in Hydra: first the ordered list of sources, then a deep merge (objects key by
key; lists, scalars and null replace). The result remembers, for every JSON path, the source that
set it, and for every source the folder its relative paths are resolved against.

Path-valued keys (``PATH_KEYS``) are resolved relative to the directory of the layer that set
them (``--set`` values: the current directory). Trial ids hash the values as written, so the
resolved paths matter only for running.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, FinetuneError, Problem, UsageError

SET_SOURCE = "--set"
# JSON paths of path-valued keys; "*" matches any key of that object.
PATH_KEYS = ("$.database", "$.checkpoints.prefix", "$.tokenizers.prefix", "$.data.mirrors.*", "$.data.cache_dir",
             "$.training.logit_directory")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def join_path(parent: str, key: str | int) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; keys that are not identifiers use ``["..."]``; ints use ``[i]``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _IDENT.match(key):
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


def path_of(parts: Iterable[str | int]) -> str:
    path = "$"
    for part in parts:
        path = join_path(path, part)
    return path


def _parent(path: str) -> str | None:
    """The parent JSON path, or None for ``$``."""
    if path == "$":
        return None
    if path.endswith("]"):
        depth = 0
        for i in range(len(path) - 1, -1, -1):
            if path[i] == "]":
                depth += 1
            elif path[i] == "[":
                depth -= 1
                if depth == 0:
                    return path[:i]
    i = path.rfind(".")
    return path[:i] if i > 0 else "$"


@dataclass
class Layered:
    """The merged config and where each value came from."""

    value: dict[str, Any]
    provenance: dict[str, str]  # JSON path -> source (a file as given, or "--set"); objects too
    sources: list[str]  # files in load order, then "--set" if any override was given
    source_dirs: dict[str, Path] = field(default_factory=dict)  # source -> folder for relative paths

    def source_of(self, path: str) -> str:
        """The source that set ``path``, or else the nearest enclosing object's last writer."""
        p: str | None = path
        while p is not None:
            src = self.provenance.get(p)
            if src is not None:
                return src
            p = _parent(p)
        return self.sources[-1] if self.sources else "<config>"

    def base_dir(self, path: str) -> Path:
        return self.source_dirs.get(self.source_of(path), Path.cwd())

    def resolve(self, path: str, value: str | None) -> str | None:
        """An absolute, normalised path for a path-valued ``value`` found at JSON ``path``."""
        if value is None:
            return None
        expanded = os.path.expanduser(value)
        if os.path.isabs(expanded):
            return os.path.normpath(expanded)
        return os.path.normpath(os.path.join(self.base_dir(path), expanded))


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as users should read it: relative to the current directory when below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def find_default(files: Sequence[str]) -> Path | None:
    """default.json beside the first file, else the repository's config/default.json."""
    candidates = []
    if files:
        candidates.append(Path(files[0]).resolve().parent / "default.json")
    candidates.append(Path(__file__).resolve().parents[2] / "config" / "default.json")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=VALUE`` -> (["a", "b"], VALUE parsed as JSON, else the raw string)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in parts):
        raise UsageError(problems=[Problem(SET_SOURCE, "", f"expected KEY.PATH=VALUE, got {text!r}")])
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return parts, value


def merge_into(
    base: dict[str, Any], layer: dict[str, Any], source: str, provenance: dict[str, str], path: str = "$"
) -> None:
    """Deep-merge ``layer`` into ``base`` in place, recording ``source`` for every path it sets."""
    provenance[path] = source
    for key, new in layer.items():
        child = join_path(path, key)
        old = base.get(key)
        if isinstance(new, dict) and isinstance(old, dict):
            merge_into(old, new, source, provenance, child)
            continue
        if key in base:
            _forget_below(provenance, child)
        base[key] = _deepcopy(new)
        _record(base[key], source, provenance, child)


def _record(value: Any, source: str, provenance: dict[str, str], path: str) -> None:
    provenance[path] = source
    if isinstance(value, dict):
        for key, child in value.items():
            _record(child, source, provenance, join_path(path, key))


def _forget_below(provenance: dict[str, str], path: str) -> None:
    stale = [p for p in provenance if p.startswith(path + ".") or p.startswith(path + "[")]
    for p in stale:
        del provenance[p]


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """A human-written JSON file: JSON plus comments and trailing commas (the ``json5`` package).

    Strict JSON (generated grids, large files) takes the fast standard parser; anything else
    goes to json5, which reports syntax errors with file, line and column.
    """
    from finetune.fileio import read_json5

    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return read_json5(path)


def read_layer(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One layer file: JSON with comments and trailing commas; must be an object."""
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise ConfigError(problems=[Problem(str(path), "$", f"must be a JSON object (got {type(data).__name__})")])
    return data


def load_config(files: Sequence[str], overrides: Sequence[str] = (), *, default: str | None = None) -> Layered:
    """Load default.json (see ``find_default``), then ``files`` in order, then ``overrides``.

    Every file is read before any error is raised, so syntax errors in several files are
    reported together.
    """
    ordered: list[str] = []
    default_path = Path(default) if default is not None else find_default(files)
    given = {Path(f).resolve() for f in files}
    if default is not None and not default_path.is_file():
        raise ConfigError(problems=[Problem(str(default), "", "default config not found")])
    if default_path is not None and default_path.resolve() not in given:
        ordered.append(display_path(default_path) if default is None else str(default))
    ordered.extend(str(f) for f in files)

    layers: list[tuple[str, dict[str, Any]]] = []
    problems: list[Problem] = []
    for name in ordered:
        try:
            layers.append((name, read_layer(name)))
        except FinetuneError as e:
            problems.extend(e.problems)
    parsed_overrides = []
    for text in overrides:
        try:
            parsed_overrides.append(parse_override(text))
        except FinetuneError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems=problems)

    value: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    source_dirs: dict[str, Path] = {}
    for name, data in layers:
        merge_into(value, data, name, provenance)
        source_dirs[name] = Path(name).resolve().parent
    sources = [name for name, _ in layers]
    if parsed_overrides:
        sources.append(SET_SOURCE)
        source_dirs[SET_SOURCE] = Path.cwd()
        for parts, v in parsed_overrides:
            nested: Any = v
            for part in reversed(parts):
                nested = {part: nested}
            merge_into(value, nested, SET_SOURCE, provenance)
    # the root and intermediate objects were marked by every layer; keep that (last writer wins)
    return Layered(value=value, provenance=provenance, sources=sources, source_dirs=source_dirs)


def _path_slots(value: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(keys, JSON path) of every path-valued key (``PATH_KEYS``) that holds a string."""
    out = []
    for pattern in PATH_KEYS:
        keys = tuple(pattern[2:].split("."))
        parents: list[tuple[tuple[str, ...], Any]] = [((), value)]
        for k in keys:
            step = []
            for done, node in parents:
                if isinstance(node, dict):
                    names = list(node) if k == "*" else [k] if k in node else []
                    step += [((*done, name), node[name]) for name in names]
            parents = step
        out += [(done, path_of(done)) for done, node in parents if isinstance(node, str)]
    return out


def resolved_paths(layered: Layered) -> dict[str, str | None]:
    """JSON path -> absolute path for every path-valued key present in the merged config."""
    out: dict[str, str | None] = {}
    for keys, path in _path_slots(layered.value):
        node: Any = layered.value
        for k in keys:
            node = node[k]
        out[path] = layered.resolve(path, node)
    return out


def resolved_value(layered: Layered) -> dict[str, Any]:
    """A copy of the merged config with every path-valued key made absolute."""
    out = _deepcopy(layered.value)
    paths = resolved_paths(layered)
    for keys, path in _path_slots(out):
        node = out
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = paths[path]
    return out
