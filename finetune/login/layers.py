"""Config layering: our shipped default.json, the user's default.json, the given files, then
``--set`` overrides.

Two phases, as in Hydra: first the ordered list of sources, then a deep merge (objects key by
key; lists, scalars and null replace). The result remembers, for every JSON path, the source that
set it, and for every source the folder its relative paths are resolved against.

Sources, in order: the shipped ``config/default.json`` (always the base, so a user's default.json
needs to list nothing); the user's default.json (``--default``, else the one beside the first
file); the files; ``--set``. Each layer is translated from the original tool's format when it
uses legacy keys (``finetune.login.legacy``); what was ignored comes back as warnings. When no
layer but the shipped base sets ``database``, a ``language-database.json`` in the user's folder
(beside their default.json, else beside the first file) is the database, as the original tool
read ``config/language-database.json``; otherwise the shipped one.

Path-valued keys (``PATH_KEYS``) are resolved relative to the directory of the layer that set
them (``--set`` values: the current directory). Trial ids hash the values as written, so the
resolved paths matter only for running.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, FinetuneError, Problem, UsageError
from finetune.login import shipped
from finetune.login.jsonpath import join_path, path_of

__all__ = ["join_path", "path_of"]  # re-exported: callers name JSON paths through layers or jsonpath

SET_SOURCE = "--set"
SHIPPED_DEFAULT = shipped.config_file(shipped.DEFAULT_CONFIG)  # config/default.json, or the wheel's copy
DATABASE_FILE = "language-database.json"
# JSON paths of path-valued keys; "*" matches any key of that object.
PATH_KEYS = ("$.database", "$.checkpoints.prefix", "$.tokenizers.prefix", "$.data.mirrors.*", "$.data.cache_dir",
             "$.training.logit_directory", "$.tensorboard")

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
    warnings: list[Problem] = field(default_factory=list)  # legacy keys accepted but ignored
    base: str | None = None  # the shipped default.json as named in sources, when loaded

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
    """The user's default.json: the one beside the first file, unless that is the shipped one."""
    if not files:
        return None
    candidate = Path(files[0]).resolve().parent / "default.json"
    if candidate.is_file() and candidate != SHIPPED_DEFAULT.resolve():
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
    except (ValueError, RecursionError):
        value = raw
    from finetune.fileio import check_config_values

    where = "$"
    for part in parts:
        where = join_path(where, part)
    check_config_values(value, SET_SOURCE, where)
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
    from finetune.fileio import DuplicateKeys, check_config_values, read_json5

    dups = DuplicateKeys()
    text = None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        data = json.loads(text, object_pairs_hook=dups)
    except (OSError, ValueError, RecursionError):
        dups = DuplicateKeys()
        data = read_json5(path, object_pairs_hook=dups)  # says what is wrong, with file, line and column
    else:
        check_config_values(data, str(path))
    if dups.keys:
        if text is None:
            text = Path(path).read_text(encoding="utf-8")
        raise ConfigError(problems=dups.problems(str(path), text))
    return data


def read_layer(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One layer file: JSON with comments and trailing commas; must be an object."""
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise ConfigError(problems=[Problem(str(path), "$", f"must be a JSON object (got {type(data).__name__})")])
    return data


def _resolved(path: str | os.PathLike[str]) -> Path:
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):  # a symlink loop: reading it reports the problem
        return Path(os.path.abspath(path))


def load_config(files: Sequence[str], overrides: Sequence[str] = (), *, default: str | None = None,
                base: str | os.PathLike[str] | None = SHIPPED_DEFAULT) -> Layered:
    """Load ``base`` (the shipped default.json; None: no base), the user's default.json
    (``default``, else ``find_default``), then ``files`` in order, then ``overrides``.

    Every file is read before any error is raised, so syntax errors in several files are
    reported together.
    """
    from finetune.login.legacy import translate_layer

    if default is not None and not Path(default).is_file():
        raise ConfigError(problems=[Problem(str(default), "", "default config not found")])
    user_default = Path(default) if default is not None else find_default(files)
    given = {_resolved(f) for f in files}
    ordered: list[str] = []
    base_name = None
    if base is not None and Path(base).is_file() and Path(base).resolve() not in given:
        base_name = display_path(base)
        ordered.append(base_name)
    skip = given | ({Path(base).resolve()} if base is not None else set())
    if user_default is not None and user_default.resolve() not in skip:
        ordered.append(display_path(user_default) if default is None else str(default))
    ordered.extend(str(f) for f in files)

    layers: list[tuple[str, dict[str, Any]]] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for name in ordered:
        try:
            translation = translate_layer(read_layer(name), name)
        except FinetuneError as e:
            problems.extend(e.problems)
            continue
        if translation.changed:
            translation.relative_paths = relative_path_keys(translation.value)
        problems += translation.problems
        warnings += translation.warnings(name)
        layers.append((name, translation.value))
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
    layered = Layered(value=value, provenance=provenance, sources=sources, source_dirs=source_dirs,
                      warnings=warnings, base=base_name)
    anchor = user_default or (Path(files[0]) if files else None)
    if base_name is not None and anchor is not None and provenance.get("$.database") == base_name:
        _use_folder_database(layered, anchor.resolve().parent)
    return layered


def _use_folder_database(layered: Layered, folder: Path) -> None:
    """The user's folder's language-database.json, when the shipped base is all that names one."""
    candidate = folder / DATABASE_FILE
    shipped = layered.resolve("$.database", layered.value.get("database"))
    if not candidate.is_file() or shipped is None or candidate.resolve() == Path(shipped).resolve():
        return
    name = display_path(candidate)
    layered.value["database"] = DATABASE_FILE
    layered.provenance["$.database"] = name
    layered.source_dirs[name] = folder


def path_slots(value: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
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


def relative_path_keys(layer: dict[str, Any]) -> list[str]:
    """JSON paths of the layer's path-valued keys that hold a relative path."""
    out = []
    for keys, path in path_slots(layer):
        node: Any = layer
        for k in keys:
            node = node[k]
        if not os.path.isabs(os.path.expanduser(node)):
            out.append(path)
    return out


def resolved_paths(layered: Layered) -> dict[str, str | None]:
    """JSON path -> absolute path for every path-valued key present in the merged config."""
    out: dict[str, str | None] = {}
    for keys, path in path_slots(layered.value):
        node: Any = layered.value
        for k in keys:
            node = node[k]
        out[path] = layered.resolve(path, node)
    return out


def resolved_value(layered: Layered) -> dict[str, Any]:
    """A copy of the merged config with every path-valued key made absolute."""
    out = _deepcopy(layered.value)
    paths = resolved_paths(layered)
    for keys, path in path_slots(out):
        node = out
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = paths[path]
    return out
