"""The ``finetune`` command: a thin layer of subcommands over the library.

Each module in this package defines ``register(subparsers)``, which adds its subcommands with
``set_defaults(func=handler)``; a handler takes the parsed ``argparse.Namespace`` and returns an
exit code. Modules are discovered, so adding a command never edits this file. Library errors
(``FinetuneError``) become one clean message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from finetune import __version__
from finetune.errors import FinetuneError

EPILOG = """examples:
  finetune config show config/finetune-rus-pol.json config/finetune-rus-pol-topic.json
  finetune plan config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --grid-config config/grid-search.json --output-dir runs/rus-pol
  finetune status runs/rus-pol
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Plan, submit, run and collect multilingual nanoGPT fine-tuning experiments.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"finetune {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except FinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `finetune status DIR --json | head`: the reader has gone
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except PermissionError as e:  # an unwritable plan folder or output file: say which, no traceback
        where = e.filename or "?"
        print(f"error: {where}: cannot write or read: {e.strerror or e}", file=sys.stderr)
        return 2


def run_script(argv_parser: argparse.ArgumentParser, handler, argv: Sequence[str] | None = None) -> int:
    """Entry for the scripts in scripts/: parse with their own parser, run, map errors to exit 2."""
    args = argv_parser.parse_args(argv)
    try:
        return int(handler(args) or 0)
    except FinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
