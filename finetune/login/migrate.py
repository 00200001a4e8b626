"""`finetune config migrate`: config files of the original tool, rewritten in the current formats.

``migrate`` is pure: it reads the sources, translates each file (``finetune.login.legacy``),
checks everything and returns the new texts, or raises ConfigError listing every problem.
``write`` is the edge: it writes them, atomically, under the same file names, and only when
every file is good, so bad input writes nothing.

A written file keeps every value (trial ids stay the same), starts with a comment saying what
was mapped and lists the dropped legacy keys with their values, carries a comment beside each
mapped key, and names its schema in ``"$schema"`` (relative to the output folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, FinetuneError, Problem
from finetune.login.layers import DATABASE_FILE, join_path, relative_path_keys

SUFFIXES = (".json", ".jsonc", ".json5")
WIDTH = 100  # objects that fit on a line (and carry no comment) are written on one line


@dataclass
class Migrated:
    source: Path
    target: Path
    kind: str  # config | database | grid
    text: str
    summary: list[str] = field(default_factory=list)  # what was mapped or dropped, one line each
    unchanged: bool = False  # the target already holds exactly this text


def collect(sources: Sequence[str]) -> tuple[list[Path], list[Problem]]:
    """The files to migrate: each file given, and the JSON files directly inside each folder."""
    files: list[Path] = []
    problems = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in SUFFIXES)
            if not found:
                problems.append(Problem(src, "", "no .json files in this folder"))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Problem(src, "", "not found"))
    return list(dict.fromkeys(files)), problems


def migrate(sources: Sequence[str], out_dir: str | os.PathLike[str], *, force: bool = False) -> list[Migrated]:
    """Translate every source file into ``out_dir``'s version of it; raise ConfigError on any problem."""
    from finetune.login.layers import read_config_file
    from finetune.login.schema import kind_of

    out = Path(out_dir)
    files, problems = collect(sources)
    if out.exists() and not out.is_dir():
        problems.append(Problem("--out", "", f"{out} is a file, not a folder"))
    read: list[tuple[Path, Any, str]] = []
    for f in files:
        try:
            data = read_config_file(f)
        except FinetuneError as e:
            problems += e.problems
            continue
        if not isinstance(data, dict):
            problems.append(Problem(str(f), "$", f"must be a JSON object (got {type(data).__name__})"))
            continue
        read.append((f, data, kind_of(data, str(f))))
    names: dict[str, Path] = {}
    for f, _data, _kind in read:
        if f.name in names:
            problems.append(Problem(str(f), "", f"has the same name as {names[f.name]}; migrate them into "
                                    "different folders"))
        names.setdefault(f.name, f)
        if out.is_dir() and f.resolve().parent == out.resolve():
            problems.append(Problem(str(f), "", "is in the --out folder: migrating would overwrite it; "
                                    "choose another --out"))
    databases = {f.resolve().parent for f, _d, kind in read if kind == "database" and f.name == DATABASE_FILE}
    results = []
    for f, data, kind in read:
        try:
            results.append(_migrate_one(f, data, kind, out, database_beside=f.resolve().parent in databases))
        except FinetuneError as e:
            problems += e.problems
    for m in results:
        if m.target.is_file() and m.target.resolve() != m.source.resolve():
            if m.target.read_text(encoding="utf-8") == m.text:
                m.unchanged = True
            elif not force:
                problems.append(Problem(str(m.target), "", "exists and differs; remove it or use --force"))
    if problems:
        raise ConfigError(problems=problems)
    return results


def write(migrated: Sequence[Migrated]) -> None:
    """Write the migrated files (each atomically)."""
    from finetune.fileio import atomic_write_text, ensure_directory

    for m in migrated:
        if not m.unchanged:
            ensure_directory(m.target.parent, "--out")
            atomic_write_text(m.target, m.text)


def _migrate_one(f: Path, data: dict[str, Any], kind: str, out: Path, *, database_beside: bool) -> Migrated:
    from finetune.login import legacy
    from finetune.login.database import consistency_problems, espeak_voice
    from finetune.login.grid import grid_problems, parse_grid
    from finetune.login.schema import hyperparameter_names, schema_path, validate, validate_layer

    source = str(f)
    body = {k: v for k, v in data.items() if k != "$schema"}
    if kind == "database":
        t = legacy.translate_database(body, source, voices=espeak_voice)
        problems = t.problems or validate("database", t.value, source) + consistency_problems(t.value, source)
    elif kind == "grid":
        t = legacy.Translation(body)
        problems = validate("grid", body, source)
        problems = problems or grid_problems(parse_grid(body, source), hyperparameter_names(), None)
    else:
        t = legacy.translate_layer(body, source)
        if t.changed:
            t.relative_paths = relative_path_keys(t.value)
        problems = t.problems or validate_layer(t.value, source)
        if f.name == "default.json" and database_beside and "database" not in t.value:
            t.value = {"database": DATABASE_FILE, **t.value}
            t.notes.append(legacy.Note("$.database", "$.database", "the original tool read "
                                       f"config/{DATABASE_FILE}; named here (relative to this file)"))
    if problems:
        raise ConfigError(problems=problems)
    schema = os.path.relpath(schema_path(kind), out.resolve())
    value = {"$schema": schema, **t.value}
    comments: dict[str, list[str]] = {}
    for note in t.notes:
        if note.path is not None:
            comments.setdefault(note.path, []).append(note.text)
    header = [f"Migrated from {f.name} by `finetune config migrate` (the original tool's format)."]
    mapped = [n for n in t.notes if n.path is not None]
    if mapped and kind == "database":
        splits = sum(1 for n in mapped if n.path.endswith(".splits"))
        voices = [n.path.split(".")[1] for n in mapped if n.path.endswith(".espeak")]
        if splits:
            header.append(f"Mapped: splits [train, eval] -> {{train, eval, test: eval}} ({splits} entries)")
        if voices:
            header.append(f"Mapped: espeak voices derived from the language names ({', '.join(voices)})")
    elif mapped:
        header.append("Mapped (see the comment beside each): " + ", ".join(
            _short(n.legacy_path) + (" (added)" if n.legacy_path == n.path else f" -> {_short(n.path)}") for n in mapped))
    header += [n.text for n in t.notes if n.path is None]
    if t.dropped:
        header.append("Dropped, no meaning here (values kept for the record):")
        header += [f"  {_short(d.path)}: {json.dumps(d.value, ensure_ascii=False)}: {d.reason}" for d in t.dropped]
    for p in t.relative_paths:
        header.append(f"{_short(p)}: {legacy.RELATIVE_PATH_NOTE}")
    if not t.changed:
        header.append("Nothing to map: already in the current format; \"$schema\" added.")
    text = "".join(f"// {line}\n" for line in header) + render(value, comments) + "\n"
    summary = header[1:]
    return Migrated(source=f, target=out / f.name, kind=kind, text=text, summary=summary)


def _short(path: str) -> str:
    return path[2:] if path.startswith("$.") else path


def render(value: Any, comments: dict[str, list[str]] | None = None, path: str = "$", indent: int = 0) -> str:
    """JSON with ``// comments`` on the lines before the keys they belong to (a JSON5 document).

    Objects without comments inside that fit in ``WIDTH`` columns stay on one line.
    """
    comments = comments or {}
    one_line = json.dumps(value, ensure_ascii=False)
    inside = any(p.startswith(path + ".") or p.startswith(path + "[") for p in comments)
    if not isinstance(value, dict) or not value or (not inside and len(one_line) + 2 * indent <= WIDTH):
        return one_line
    pad = "  " * (indent + 1)
    lines = ["{"]
    items = list(value.items())
    for i, (key, child) in enumerate(items):
        child_path = join_path(path, key)
        lines += [f"{pad}// {c}" for c in comments.get(child_path, [])]
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"{pad}{json.dumps(key, ensure_ascii=False)}: {render(child, comments, child_path, indent + 1)}{comma}")
    lines.append("  " * indent + "}")
    return "\n".join(lines)
