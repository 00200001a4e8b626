"""`finetune config show` (the merged config, optionally with each value's source),
`finetune config validate` (every problem of configs, database and grid at once) and
`finetune config migrate` (the original tool's files in the current formats)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

SHOW_EPILOG = """examples:
  finetune config show config/finetune-rus-pol.json config/finetune-rus-pol-topic.json
  finetune config show config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --explain
  finetune config show config/finetune-rus-pol-topic.json --set hyperparameters.learning_rate=3e-4
  finetune config show config/finetune-rus-pol.json config/finetune-rus-pol-topic.json config/data-local.json --resolved

Layers: the shipped config/default.json, then your default.json (beside the first file, or
--default), then the files in the order given, then --set overrides (VALUE parsed as JSON, else taken as a string). Objects
merge key by key; lists, scalars and null replace. --explain prints the same JSON with a
// comment after each value naming the layer that set it. --resolved makes path-valued keys
absolute (they are relative to the layer that set them; --set values to the current directory).
An invalid merged config is still printed, and its schema problems exit with code 2.
"""

VALIDATE_EPILOG = """examples:
  finetune config validate config/finetune-rus-pol.json config/finetune-rus-pol-topic.json
  finetune config validate config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --grid-config config/grid-search.json
  finetune config validate config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --matrix
  finetune config validate config/language-database.json config/grid-demo.json

Checks the merged config, the language database and the grid against their schemas and each
other, and prints every problem at once (file: JSON path: message); exit code 2 when any.
A database or grid file (by its "$schema", else by its shape: the original tool's files name no
schema) is checked on its own. Every checkpoint, tokenizer and local dataset the planned trials
read must exist (each missing one is named with the layer and JSON path that set it; --no-files
skips this); a hub dataset not yet fetched by `finetune prefetch` is a warning. Writes nothing.
"""

MIGRATE_EPILOG = """examples:
  finetune config migrate old-repo/config --out config-migrated
  finetune config migrate old/default.json old/finetune-rus-pol.json old/language-database.json --out config-new

Rewrites config files of the original grid-search.py / finetuning-generator.py (a folder: every
.json file directly inside it) into the current formats under the same file names in DIR. Values
stay as they were, so the migrated folder plans the same trials with the same ids. Each file
starts with a comment saying what was mapped (hf_cache -> data.cache_dir, random_seed ->
hyperparameters.seed, cpu_only -> training.device, list splits -> objects, espeak voices from
the language names) and lists the dropped legacy keys with their values; "$schema" names its
schema. Any problem: every one is listed, exit code 2, nothing written. Files already in DIR are
replaced only with --force (identical ones are left alone).
"""


def add_layer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="+", metavar="CONFIG", help="config layers (JSON with comments), in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", dest="set",
                   help="override one value after all files (repeatable); VALUE is JSON, else a string")
    p.add_argument("--default", metavar="PATH", default=None,
                   help="your default layer, loaded right after the shipped config/default.json "
                        "(default: default.json beside the first CONFIG)")


DEFAULT_MODEL_TYPES = ("normal", "ipa")


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    """Which trials of the layered config: --grid-config, --model-type, --matrix."""
    p.add_argument("--grid-config", metavar="GRID", default=None, help="a grid config (as for `finetune plan`)")
    p.add_argument("--model-type", nargs="+", default=list(DEFAULT_MODEL_TYPES), metavar="TYPE",
                   help="model types: normal, ipa (default: normal ipa)")
    p.add_argument("--matrix", action="store_true", help="the cross-language matrix (as `finetune matrix`)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter

    group = subparsers.add_parser(
        "config", help="show or validate layered configs",
        description="Show or validate layered configs.",
        epilog="examples:\n  finetune config show config/finetune-rus-pol.json config/finetune-rus-pol-topic.json\n"
               "  finetune config validate config/finetune-rus-pol.json config/finetune-rus-pol-topic.json\n",
        formatter_class=HelpFormatter)
    sub = group.add_subparsers(dest="config_command", metavar="COMMAND")
    group.set_defaults(func=lambda _args: (group.print_help(sys.stderr), 2)[1])

    show = sub.add_parser("show", help="print the merged config as JSON",
                          description="Print the merged config (default.json + CONFIG... + --set) as JSON.",
                          epilog=SHOW_EPILOG, formatter_class=HelpFormatter)
    add_layer_arguments(show)
    show.add_argument("--explain", action="store_true", help="add each value's source as a // comment")
    show.add_argument("--grid-config", metavar="GRID", default=None,
                      help="show the grid's values in hyperparameters too: swept lists as lists (with --explain, "
                           "marked swept and how many values)")
    show.add_argument("--resolved", action="store_true",
                      help="print path-valued keys as absolute paths (as frozen into trial configs)")
    show.set_defaults(func=_show)

    val = sub.add_parser("validate", help="check configs, database and grid; list every problem",
                         description="Validate the merged config, its language database and a grid config.",
                         epilog=VALIDATE_EPILOG, formatter_class=HelpFormatter)
    add_layer_arguments(val)
    add_selection_arguments(val)
    val.add_argument("--no-files", action="store_true",
                     help="check the configs only, not that the checkpoints, tokenizers and local datasets exist")
    val.set_defaults(func=_validate)

    mig = sub.add_parser("migrate", help="rewrite config files of the original tool in the current formats",
                         description="Rewrite config folders or files of the original tool in the current formats.",
                         epilog=MIGRATE_EPILOG, formatter_class=HelpFormatter)
    mig.add_argument("sources", nargs="+", metavar="SRC", help="config folders or files (original formats)")
    mig.add_argument("--out", required=True, metavar="DIR", help="folder for the migrated files (same names)")
    mig.add_argument("--force", action="store_true", help="replace files that already exist in DIR")
    mig.set_defaults(func=_migrate)


def _show(args: argparse.Namespace) -> int:
    """Print the merged config, even an invalid one (to see what the layers made), then exit 2
    listing its schema problems when there are any."""
    from finetune.errors import ConfigError
    from finetune.login.layers import load_config, resolved_value
    from finetune.login.schema import validate_config

    layered = load_config(args.config, args.set, default=args.default)
    for w in layered.warnings:
        print(f"warning: {w}", file=sys.stderr)
    value = resolved_value(layered) if args.resolved else layered.value
    source_of = layered.source_of
    if args.grid_config:
        value, source_of = _with_grid(value, source_of, args.grid_config)
    if args.explain:
        sys.stdout.write(explain(value, source_of) + "\n")
    else:
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    problems = validate_config(layered)
    if problems:
        raise ConfigError("the merged config is invalid (`finetune config validate` checks it all):",
                          problems=problems)
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Layers go through build_plan; a database or grid file (by its "$schema") is checked on its own."""
    from finetune.errors import ConfigError, FinetuneError
    from finetune.login.database import load_database
    from finetune.login.grid import grid_problems, parse_grid
    from finetune.login.layers import read_config_file
    from finetune.login.plan import build_plan
    from finetune.login.schema import hyperparameter_names, validate

    layers, problems, lines = [], [], []
    for name in args.config:
        kind = _schema_kind(name, read_config_file)
        try:
            if kind == "database":
                db = load_database(name)
                lines.append(f"ok: {name}: database with {len(db.languages())} languages")
            elif kind == "grid":
                data = read_config_file(name)
                found = validate("grid", data, name)
                found = found or grid_problems(parse_grid(data, name), hyperparameter_names(), None)
                if found:
                    raise ConfigError(problems=found)
                lines.append(f"ok: {name}: grid")
            else:
                layers.append(name)
        except FinetuneError as e:
            problems += e.problems
    if layers:
        try:
            plan = build_plan(layers, args.set, grid_config=args.grid_config, model_types=args.model_type,
                              matrix=args.matrix, default=args.default)
            counts = ", ".join(f"{mt}: {n}" for mt, n in plan.counts().items())
            warnings = list(plan.warnings)
            if not args.no_files:
                from finetune.login.check import check_plan

                for p in check_plan(plan):  # named by the layer and JSON path that set the value
                    # a hub dataset not prefetched yet is expected before `finetune prefetch`
                    (warnings if "hub dataset" in p.message else problems).append(p)
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
            if not problems:
                lines.append(f"ok: {len(plan.trials)} trials ({counts})"
                             + ("" if args.no_files else "; every checkpoint, tokenizer and local dataset found"))
        except FinetuneError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems=problems)
    print("\n".join(lines))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from finetune.login.migrate import migrate, write

    migrated = migrate(args.sources, args.out, force=args.force)
    write(migrated)
    for m in migrated:
        print(f"{'unchanged' if m.unchanged else 'wrote'} {m.target} ({m.kind}, from {m.source})")
        for line in m.summary:
            print(f"  {line}")
    return 0


def _schema_kind(name: str, read) -> str:
    """"database" or "grid" when the file is one (by its "$schema", else its shape), else "config"."""
    from finetune.errors import FinetuneError
    from finetune.login.schema import kind_of

    try:
        data = read(name)
    except FinetuneError:
        return "config"  # reported when loaded as a layer
    return kind_of(data, name)


def _with_grid(value: dict[str, Any], source_of, grid_config: str):
    """The merged config with the grid's parameters in ``hyperparameters``, and who set each."""
    import copy

    from finetune.errors import ConfigError
    from finetune.login.grid import parse_grid
    from finetune.login.layers import read_config_file
    from finetune.login.schema import validate

    data = read_config_file(grid_config)
    problems = validate("grid", data, grid_config)
    if problems:
        raise ConfigError(problems=problems)
    grid = parse_grid(data, grid_config)
    value = copy.deepcopy(value)
    hyper = value.setdefault("hyperparameters", {})
    notes = {}
    for name, v in grid.parameters.items():
        hyper[name] = v
        if isinstance(v, list):
            zipped = next((g for g in grid.zip if name in g), None)
            how = f"swept: {len(v)} values" + (f", zipped with {', '.join(x for x in zipped if x != name)}"
                                               if zipped else "")
        else:
            how = "fixed" if not isinstance(v, dict) else "searched"
        notes[f"$.hyperparameters.{name}"] = f"{grid_config} ({how})"

    def source(path: str) -> str:
        return notes.get(path) or source_of(path)

    return value, source


def explain(value: Any, source_of, path: str = "$", indent: int = 0) -> str:
    """Pretty JSON with ``// source`` after every leaf (a valid JSON5/JSONC document)."""
    from finetune.login.layers import join_path

    if not isinstance(value, dict) or not value:
        return json.dumps(value, ensure_ascii=False)
    pad = "  " * (indent + 1)
    lines = ["{"]
    items = list(value.items())
    for i, (key, child) in enumerate(items):
        child_path = join_path(path, key)
        comma = "," if i < len(items) - 1 else ""
        text = explain(child, source_of, child_path, indent + 1)
        line = f"{pad}{json.dumps(key, ensure_ascii=False)}: {text}{comma}"
        if not (isinstance(child, dict) and child):
            line += f"  // {source_of(child_path)}"
        lines.append(line)
    lines.append("  " * indent + "}")
    return "\n".join(lines)
