"""`finetune plan` / `finetune matrix` / `finetune config` and the two scripts, through their real entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import json5
import pytest

from finetune.cli import main

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"
PAIR, TASK, LOCAL = (str(CONFIG / n) for n in ("finetune-rus-pol.json", "finetune-rus-pol-topic.json", "data-local.json"))
GRID = str(CONFIG / "grid-search.json")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_proc(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, cwd=cwd or REPO,
                          timeout=120)


def big_grid(tmp_path: Path, per_type: int) -> str:
    p = tmp_path / "big.json"
    p.write_text(json.dumps({"parameters": {"seed": list(range(per_type))}}))
    return str(p)


def test_plan_writes_the_plan_and_a_rerun_adds_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "plan", PAIR, TASK, "--grid-config", GRID, "--output-dir", str(out),
                                "--no-submit")
    assert (code, err) == (0, "")
    assert stdout == f"planned 12 trials (normal: 6, ipa: 6) in {out}: 12 new, 0 already planned; plan.json has 12\n"
    first = (out / "plan.json").read_bytes()
    code, stdout, _ = run_cli(capsys, "plan", PAIR, TASK, "--grid-config", GRID, "-o", str(out), "--no-submit")
    assert code == 0 and "0 new, 12 already planned; plan.json has 12" in stdout
    assert (out / "plan.json").read_bytes() == first


def test_matrix_counts(tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "matrix", PAIR, TASK, "-o", str(tmp_path / "m"), "--no-submit")
    assert code == 0 and stdout.startswith("planned 6 trials (normal: 3, ipa: 3)")
    code, stdout, _ = run_cli(capsys, "matrix", PAIR, TASK, "--set", "datasets.czech=sib200", "--model-type", "ipa",
                              "-o", str(tmp_path / "m3"), "--no-submit")
    assert code == 0 and stdout.startswith("planned 4 trials (ipa: 4)")


def test_bad_config_exits_2_with_every_problem_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hyperparameters": {"learing_rate": 1e-4, "batch_size": 0}}')
    out = tmp_path / "run"
    proc = run_proc("-m", "finetune", "plan", PAIR, TASK, str(bad), "-o", str(out))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr == (f"error: {bad}: $.hyperparameters.batch_size: must be >= 1 (got 0)\n"
                           f"{bad}: $.hyperparameters.learing_rate: unknown key (did you mean learning_rate?)\n")
    assert not out.exists()


def test_json_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "task": "topic"\n  "datasets": {}\n}')
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "plan", PAIR, str(bad), "-o", str(out))
    assert code == 2 and stdout == ""
    assert err == f'error: {bad}: invalid JSON: line 3, column 3: Unexpected """\n'
    assert not out.exists()


def test_guard_refuses_more_than_500_trials_without_yes(tmp_path, capsys):
    out = tmp_path / "run"
    grid = big_grid(tmp_path, 251)
    code, stdout, err = run_cli(capsys, "plan", PAIR, TASK, "--grid-config", grid, "-o", str(out))
    assert code == 2 and stdout == ""
    assert err == ("error: --yes: this plan has 502 trials (more than 500); "
                   "add --yes to submit them, or --dry-run to look first\n")
    assert not out.exists()
    # exactly 500 passes the guard (only planned here)
    code, stdout, _ = run_cli(capsys, "plan", PAIR, TASK, "--grid-config", big_grid(tmp_path, 250), "-o",
                              str(tmp_path / "ok"), "--no-submit")
    assert code == 0 and "planned 500 trials" in stdout


def test_guard_lets_yes_through_to_submission(tmp_path, capsys):
    out = tmp_path / "run"
    # no checkpoints exist under this prefix, so submission itself refuses after the guard
    code, stdout, err = run_cli(capsys, "plan", PAIR, TASK, "--grid-config", big_grid(tmp_path, 251), "-o",
                                str(out), "--yes", "--executor", "local", "--set", f"checkpoints.prefix={tmp_path}")
    assert "more than 500" not in err
    assert "planned 502 trials" in stdout
    assert len(json.loads((out / "plan.json").read_text())["trials"]) == 502
    assert code == 2 and "ckpt.pt" in err  # the submit step names what is missing


def test_temp_config_dir_is_an_alias_of_output_dir(tmp_path, capsys):
    d = tmp_path / "tmpconf"
    code, _, _ = run_cli(capsys, "plan", PAIR, TASK, "--temp-config-dir", str(d), "--no-submit")
    assert code == 0 and (d / "plan.json").is_file()
    code, stdout, err = run_cli(capsys, "plan", PAIR, TASK, "--temp-config-dir", str(d), "-o", str(tmp_path / "x"),
                                "--no-submit")
    assert code == 2 and err.startswith("error: --temp-config-dir: differs from --output-dir")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, message", [
    (["--timeout", "4h"], "error: --timeout: must be a SLURM time such as 04:00:00, 90 or 1-12:00:00 (got '4h')"),
    (["-t", "missing.sbatch"], "error: --template: template not found: missing.sbatch"),
    (["--model-type", "phonetic"], "error: --model-type: unknown model type 'phonetic' (choose normal or ipa)"),
    (["--dry-run", "--no-submit"], "error: --no-submit: use either --dry-run or --no-submit"),
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "plan", PAIR, TASK, "-o", str(out), *flags)
    assert code == 2 and stdout == "" and err == message + "\n"
    assert not out.exists()


def test_default_output_dir_is_named_after_the_configs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(capsys, "plan", PAIR, TASK, "--grid-config", GRID, "--no-submit")
    assert code == 0
    assert (tmp_path / "runs" / "finetune-rus-pol_finetune-rus-pol-topic_grid-search" / "plan.json").is_file()
    code, stdout, _ = run_cli(capsys, "matrix", PAIR, TASK, "--no-submit")
    assert (tmp_path / "runs" / "matrix-finetune-rus-pol_finetune-rus-pol-topic" / "plan.json").is_file()


def fake_models(root: Path) -> None:
    """Empty stand-ins where the pair layer's checkpoints and tokenizers live (dry runs only look)."""
    for name in ("rus-pol-normal", "rus-pol-ipa"):
        (root / name).mkdir(parents=True)
        (root / name / "ckpt.pt").write_bytes(b"")
        (root / f"{name}-vocab.json").write_text("{}")
        (root / f"{name}-merges.txt").write_text("#version: 0.2\n")


def test_dry_run_renders_and_submits_nothing(tmp_path, capsys):
    fake_models(tmp_path / "models")
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "matrix", PAIR, TASK, LOCAL, "--grid-config", str(CONFIG / "grid-demo.json"),
                                "-o", str(out), "--dry-run", "--executor", "local", "--throttle", "2", "--max-array-size", "4",
                                "--set", f"checkpoints.prefix={tmp_path / 'models'}",
                                "--set", f"tokenizers.prefix={tmp_path / 'models'}")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("planned 12 trials (normal: 6, ipa: 6)")
    assert lines[-1].startswith("dry run: nothing submitted; one rendered script: ")
    script = Path(lines[-1].split(": ", 2)[2])
    assert script.is_file() and script.is_relative_to(out / "jobs")
    # the table of what would run, and the first script itself
    assert "12 trials would run:" in lines
    head = next(line for line in lines if line.startswith("trial "))
    assert head.split() == ["trial", "model", "train", "set", "eval", "languages", "learning_rate"]
    assert any(line.split()[1:3] == ["ipa", "polish+russian"] for line in lines if len(line.split()) > 3)
    assert script.read_text().rstrip("\n") in stdout
    assert not (out / "manifest.json").exists() or json.loads((out / "manifest.json").read_text())["submissions"] == []
    assert not list(out.glob("trials/*/result.json"))


def test_scripts_keep_the_original_flags(tmp_path):
    template = str(REPO / "jobs" / "templates" / "old-style.sbatch")
    d = tmp_path / "grid"
    proc = run_proc("scripts/grid-search.py", PAIR, TASK, "--grid-config", GRID, "-t", template, "--output-dir",
                    str(d), "--temp-config-dir", str(d), "--model-type", "normal", "ipa", "--timeout", "01:00:00",
                    "--no-submit")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("planned 12 trials (normal: 6, ipa: 6)")
    d = tmp_path / "matrix"
    proc = run_proc("scripts/finetuning-generator.py", PAIR, TASK, "--template", template, "--output-dir", str(d),
                    "--timeout", "90", "--no-submit")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("planned 6 trials (normal: 3, ipa: 3)")
    proc = run_proc("scripts/finetuning-generator.py", PAIR, str(tmp_path / "missing.json"), "--output-dir",
                    str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "missing.json: cannot read" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "nothing").exists()


def test_config_show_prints_the_merged_json(capsys):
    from finetune.login.layers import load_config

    code, stdout, _ = run_cli(capsys, "config", "show", PAIR, TASK, "--set", "hyperparameters.seed=7")
    assert code == 0
    shown = json.loads(stdout)
    assert shown == load_config([PAIR, TASK], ["hyperparameters.seed=7"]).value
    assert shown["hyperparameters"]["seed"] == 7 and shown["checkpoints"]["ipa"] == "rus-pol-ipa"


def test_config_show_explain_names_each_values_source(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, stdout, _ = run_cli(capsys, "config", "show", "config/finetune-rus-pol.json",
                              "config/finetune-rus-pol-topic.json", "--set", "slurm.gpus=1", "--explain")
    assert code == 0
    assert json5.loads(stdout)["slurm"]["gpus"] == 1  # still a JSON5 document
    lines = stdout.splitlines()
    assert '    "learning_rate": 0.0001,  // config/finetune-rus-pol-topic.json' in lines
    assert '    "dropout": 0.1,  // config/default.json' in lines
    assert '    "ipa": "rus-pol-ipa"  // config/finetune-rus-pol.json' in lines
    assert '    "gpus": 1,  // --set' in lines


def test_config_validate(tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "config", "validate", PAIR, TASK, "--grid-config", GRID, "--no-files")
    assert (code, stdout) == (0, "ok: 12 trials (normal: 6, ipa: 6)\n")
    code, stdout, _ = run_cli(capsys, "config", "validate", PAIR, TASK, "--matrix", "--no-files")
    assert (code, stdout) == (0, "ok: 6 trials (normal: 3, ipa: 3)\n")
    code, stdout, err = run_cli(capsys, "config", "validate", PAIR, TASK, "--set", "training.precision=fp8")
    assert code == 2 and stdout == ""
    assert err == 'error: --set: $.training.precision: must be one of auto, fp32, bf16, fp16 (got "fp8")\n'


def test_config_validate_names_the_layer_of_every_missing_file(tmp_path, capsys):
    fake_models(tmp_path / "models")
    (tmp_path / "models" / "rus-pol-ipa" / "ckpt.pt").unlink()
    typo = tmp_path / "typo.json"
    typo.write_text('{"checkpoints": {"normal": "rus-pol-normall"}}')
    models = ["--set", f"checkpoints.prefix={tmp_path / 'models'}", "--set", f"tokenizers.prefix={tmp_path / 'models'}"]
    code, stdout, err = run_cli(capsys, "config", "validate", PAIR, TASK, LOCAL, str(typo), *models)
    assert code == 2 and stdout == ""
    assert f"{typo}: $.checkpoints.normal: checkpoint not found: {tmp_path / 'models' / 'rus-pol-normall' / 'ckpt.pt'}" in err
    assert f"$.checkpoints.ipa: checkpoint not found: {tmp_path / 'models' / 'rus-pol-ipa' / 'ckpt.pt'}" in err
    code, stdout, err = run_cli(capsys, "config", "validate", PAIR, TASK, LOCAL, *models, "--model-type", "normal")
    assert code == 0 and stdout == "ok: 1 trials (normal: 1); every checkpoint, tokenizer and local dataset found\n"


def test_config_validate_checks_database_and_grid_files_on_their_own(tmp_path, capsys):
    db, grid = str(CONFIG / "language-database.json"), str(CONFIG / "grid-search.json")
    code, stdout, _ = run_cli(capsys, "config", "validate", db, grid)
    assert (code, stdout) == (0, f"ok: {db}: database with 8 languages\nok: {grid}: grid\n")
    bad = tmp_path / "grid.json"
    bad.write_text('{"$schema": "../finetune/login/schemas/grid.schema.json", "parameters": {"learning_rat": [1]}}')
    code, stdout, err = run_cli(capsys, "config", "validate", str(bad), PAIR, TASK, "--set", "task=topik")
    assert code == 2 and stdout == ""
    db_shown = os.path.relpath(CONFIG / "language-database.json")
    assert err == (f"error: --set: $.task: task 'topik' is not in the database {db_shown} for russian, polish "
                   "(tasks: topic) (did you mean topic?)\n"
                   f"{bad}: $.parameters.learning_rat: not a hyperparameter (did you mean learning_rate?)\n")


def test_config_show_resolved_makes_paths_absolute(capsys, tmp_path, monkeypatch, sib200_dir):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(capsys, "config", "show", PAIR, TASK, LOCAL, "--set", "data.cache_dir=cache", "--resolved")
    assert code == 0
    shown = json.loads(stdout)
    assert shown["database"] == str(CONFIG / "language-database.json")
    assert shown["checkpoints"]["prefix"] == str(REPO / "models") == shown["tokenizers"]["prefix"]
    assert Path(shown["data"]["mirrors"]["Davlan/sib200"]).resolve() == sib200_dir.resolve()
    assert shown["data"]["cache_dir"] == str(tmp_path / "cache")
    assert shown["checkpoints"]["normal"] == "rus-pol-normal"  # names are not paths


def test_an_output_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    code, _, err = run_cli(capsys, "plan", PAIR, TASK, "--output-dir", str(blocker), "--no-submit")
    assert code == 2 and "Traceback" not in err
    assert err == f"error: --output-dir: {blocker} is not a directory (a file is in the way)\n"
    assert blocker.read_text() == "mine"


def test_config_show_prints_an_invalid_config_and_exits_2(capsys):
    code, stdout, err = run_cli(capsys, "config", "show", PAIR, TASK, "--set", "training.precision=fp8",
                                "--set", "hyperparameters.learnin_rate=1")
    assert code == 2
    assert json.loads(stdout)["training"]["precision"] == "fp8"  # still printed, to see what the layers made
    assert err.startswith("error: the merged config is invalid")
    assert '--set: $.training.precision: must be one of auto, fp32, bf16, fp16 (got "fp8")' in err
    assert "learnin_rate" in err and "learning_rate" in err
    code, stdout, err = run_cli(capsys, "config", "show", PAIR, TASK, "--explain", "--set", "slurm.gpus=-1")
    assert code == 2 and '"gpus": -1,  // --set' in stdout and "$.slurm.gpus" in err


@pytest.mark.parametrize("text, named", [
    ("#!/bin/bash\n{{ undefined_var }}\n", "undefined_var"),
    ("#!/bin/bash\n{% if %}\n", "template syntax error"),
])
def test_a_dry_run_with_a_bad_template_writes_nothing(tmp_path, capsys, text, named):
    template = tmp_path / "bad.sbatch.j2"
    template.write_text(text)
    out = tmp_path / "run"
    for command in ("plan", "matrix"):
        code, stdout, err = run_cli(capsys, command, PAIR, TASK, LOCAL, "-o", str(out), "--dry-run",
                                    "--executor", "local", "-t", str(template))
        assert code == 2 and stdout == "" and str(template) in err and named in err, err
        assert not out.exists()  # no plan.json, no trial folders, no scripts
    # a plan that exists: submit's dry run with the bad template freezes no trial and renders nothing
    assert run_cli(capsys, "plan", PAIR, TASK, LOCAL, "-o", str(out), "--no-submit")[0] == 0
    plan_json = (out / "plan.json").read_bytes()
    code, stdout, err = run_cli(capsys, "submit", str(out), "--dry-run", "--executor", "local", "-t", str(template))
    assert code == 2 and named in err
    assert not (out / "trials").exists() and not (out / "jobs").exists()
    # nor does replanning into it with the bad template
    code, _, err = run_cli(capsys, "plan", PAIR, TASK, LOCAL, "--set", "hyperparameters.seed=1", "-o", str(out),
                           "--dry-run", "--executor", "local", "-t", str(template))
    assert code == 2 and (out / "plan.json").read_bytes() == plan_json
    assert not (out / "trials").exists() and not (out / "jobs").exists()


def test_plan_run_here_exits_1_when_a_trial_fails(tmp_path, capsys):
    """`finetune plan --executor local` runs the trials here: a failed one is named with its log, exit 1."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "plan", PAIR, TASK, "--model-type", "normal", "-o", str(out),
                                "--executor", "local", "--set", "training.workload=count",
                                "--set", "training.count_to=2", "--set", "training.count_sleep_s=0",
                                "--set", "training.count_fail_at=1")
    (tid,) = [t["id"] for t in json.loads((out / "plan.json").read_text())["trials"]]
    assert code == 1, err
    assert f"1 of 1 trials failed:\n  {tid} failed [count_fail_at=1 reached]; log: {out.resolve() / 'trials' / tid / 'log.txt'}\n" in stdout
    assert "error: 1 trials failed (exit 1)" in err
