"""Every `finetune` subcommand (nested ones too) and every scripts/*.py has --help with an example.

Commands are discovered from finetune.cli.build_parser(), so commands added later are covered.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))
EXAMPLE = re.compile(r"^examples?:", re.IGNORECASE | re.MULTILINE)


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found.extend(subcommands(sub, (*prefix, name)))
    return found


COMMANDS = subcommands(build_parser())


def has_example(text: str, invocation: str) -> bool:
    """An "example(s):" heading followed by at least one line that runs ``invocation``."""
    m = EXAMPLE.search(text)
    return bool(m) and invocation in text[m.end():]


def test_the_core_commands_are_discovered():
    assert {("plan",), ("matrix",), ("config",), ("config", "show"), ("config", "validate")} <= set(COMMANDS)


@pytest.mark.parametrize("command", [()] + COMMANDS, ids=lambda c: " ".join(c) or "finetune")
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith("usage: finetune")
    # a group's example may run any of its subcommands; a leaf's must run the leaf itself
    assert has_example(out, " ".join(("finetune", *command))), out


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help_with_an_example(script):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert has_example(proc.stdout, script), proc.stdout


def test_cli_start_up_imports_nothing_heavy():
    code = ("import json, sys; from finetune.cli import build_parser; build_parser(); "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'datasets', 'matplotlib', 'submitit') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert json.loads(out.stdout) == []
