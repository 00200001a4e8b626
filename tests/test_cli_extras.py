"""What a researcher sees before and while things run: the same submit flags everywhere, the grid in
`config show --explain`, pending reasons in the status summary, trials described in `status --all`."""

from __future__ import annotations

import argparse
from pathlib import Path

from submit_helpers import make_plan

from finetune.cli import build_parser, main
from finetune.login.status import StatusReport, TrialStatus

CONFIG = Path(__file__).resolve().parent.parent / "config"


def _flags(name: str) -> set[str]:
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {o for a in subs[name]._actions for o in a.option_strings} - {"-h", "--help"}


def test_every_submitting_command_takes_the_submit_flags():
    submit = _flags("submit")
    assert {"--executor", "--template", "--timeout", "--throttle", "--max-array-size", "--parallel", "--dry-run",
            "--yes"} <= submit
    for command in ("plan", "matrix"):
        assert submit <= _flags(command), command


def test_config_show_explain_with_the_grid(capsys):
    layers = [str(CONFIG / "finetune-rus-pol.json"), str(CONFIG / "finetune-rus-pol-topic.json")]
    grid = str(CONFIG / "grid-search.json")
    assert main(["config", "show", *layers, "--explain", "--grid-config", grid]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f'    "learning_rate": [5e-05, 0.0001, 0.0003],  // {grid} (swept: 3 values)' in lines
    assert f'    "seed": 42,  // {grid} (fixed)' in lines
    assert any(line.startswith('    "dropout": 0.1,  // ') and "default.json" in line for line in lines)


def test_status_summary_names_pending_reasons():
    trials = [TrialStatus("a", "pending", "PartitionConfig"), TrialStatus("b", "pending", "PartitionConfig"),
              TrialStatus("c", "pending", "Priority"), TrialStatus("d", "finished")]
    report = StatusReport(Path("runs/x"), trials, accounting=True, scheduler=True)
    assert report.summary() == "runs/x: 4 trials: finished 1, pending 3 (PartitionConfig 2, Priority 1)"
    assert report.to_json()["pending_reasons"] == {"PartitionConfig": 2, "Priority": 1}


def test_status_all_describes_each_trial(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scheduler: the trials are unsubmitted
    plan = tmp_path / "plan"
    ids = make_plan(plan, 2)
    assert main(["status", str(plan), "--all"]) == 0
    out = capsys.readouterr().out
    assert f"  {ids[0]} unsubmitted  normal, train russian, seed=0" in out
    assert f"  {ids[1]} unsubmitted  normal, train russian, seed=1" in out


def test_pretrain_takes_the_database_language_names():
    import pytest

    from finetune.cli.model import parse_languages
    from finetune.errors import UsageError

    assert parse_languages(["russian", "polish", "ces_Latn", "czech=cs-x"]) == [
        ("rus_Cyrl", "ru"), ("pol_Latn", "pl"), ("ces_Latn", "cs"), ("ces_Latn", "cs-x")]
    with pytest.raises(UsageError, match=r"'russain' is neither a SIB-200 code .* \(did you mean russian\?\)"):
        parse_languages(["russain"])
