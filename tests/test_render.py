"""Rendering: engines by file name, strict variables, quoting, and the golden default script."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from finetune import layout
from finetune.errors import ConfigError
from finetune.login.render import ShellSafe, engine_for, quote, render, render_text
from finetune.login.submit import DEFAULT_TEMPLATE, directives, script_context

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "jobs" / "templates"
GOLDEN = Path(__file__).parent / "golden" / "array.sbatch"

SLURM = {"account": "proj-42", "partition": "gpu", "qos": None, "cpus_per_task": 8, "gpus": 2, "mem": "32G",
         "time": "04:00:00", "nodes": 1, "ntasks_per_node": 1, "output": None,
         "setup": ["module load cuda/12.1", "source /opt/venvs/ft/bin/activate"], "signal_grace_s": 120,
         "extra": {"constraint": "a100", "exclusive": True, "hold": False}}


def golden_context() -> dict:
    plan = Path("/plans/rus pol")
    return script_context("ft-rus-pol-0a1b2c3d", plan, plan / "jobs" / "0001" / "0a1b2c3d-0.index", SLURM,
                          "04:00:00", python="/opt/venvs/ft/bin/python")


def test_engine_follows_file_name():
    assert engine_for("x/array.sbatch.j2") == "jinja2"
    assert engine_for("x/old.sbatch") == "format"
    assert engine_for("x/old.sh") == "format"


def test_default_template_matches_golden():
    text = render(DEFAULT_TEMPLATE, golden_context())
    if os.environ.get("FINETUNE_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_template_takes_the_trial_layout_and_requeue_code_from_the_context():
    """The script knows no file name or exit code of its own: finetune.layout supplies them."""
    ctx = golden_context()
    assert (ctx["exit_requeue"], ctx["trials_dir"], ctx["log_file"]) == (layout.EXIT_REQUEUE, layout.TRIALS_DIR,
                                                                         layout.LOG_FILE)
    text = render(DEFAULT_TEMPLATE, {**ctx, "exit_requeue": 99, "trials_dir": "tr", "log_file": "out.log"})
    assert '[ "$rc" -eq 99 ]' in text and "exits 99;" in text
    assert "trial_dir=$plan_dir/tr/$trial\n" in text and '"$trial_dir"/out.log 2>&1' in text
    assert "75" not in text and "log.txt" not in text and "/trials/" not in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_golden_is_valid_bash_with_sorted_quoted_directives():
    text = GOLDEN.read_text()
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    lines = [line for line in text.splitlines() if line.startswith("#SBATCH ")]
    flags = [shlex.split(line[len("#SBATCH "):])[0] for line in lines]
    assert flags[0] == "--job-name=ft-rus-pol-0a1b2c3d"
    resource_flags = flags[1:-3]
    assert resource_flags == sorted(resource_flags)
    assert "--output=/plans/rus pol/jobs/logs/%x-%A_%a.out" in flags  # one word after sbatch's own unquoting
    assert "--gres=gpu:2" in flags and "--exclusive" in flags and "--constraint=a100" in flags
    assert not any(f.startswith("--hold") for f in flags)  # false drops the flag
    assert flags[-3:] == ["--signal=B:USR2@120", "--requeue", "--open-mode=append"]
    assert "module load cuda/12.1\n" in text  # setup lines are shell code, verbatim


def test_jinja_missing_variable_names_template_and_variable(tmp_path):
    t = tmp_path / "mine.sbatch.j2"
    t.write_text("#!/bin/bash\necho {{ job_name }} {{ no_such_thing }}\n")
    with pytest.raises(ConfigError) as e:
        render(t, {"job_name": "x"})
    assert str(t) in str(e.value) and "no_such_thing" in str(e.value)
    assert e.value.exit_code == 2


def test_format_missing_variable_names_template_and_variable(tmp_path):
    t = tmp_path / "old.sbatch"
    t.write_text("#!/bin/bash\n#SBATCH --job-name={job_name}\npython run.py {args} {temp_config_nmae}\n")
    with pytest.raises(ConfigError) as e:
        render(t, {"job_name": "x", "args": "a"})
    assert str(t) in str(e.value) and "temp_config_nmae" in str(e.value)


@pytest.mark.parametrize("engine,text", [("jinja2", "echo {{ v }}"), ("format", "echo {v}")])
def test_every_value_is_one_shell_word(engine, text):
    nasty = "a b'c\"d $(touch x) `y`; z"
    out = render_text(text, {"v": nasty}, name="t", engine=engine)
    assert shlex.split(out) == ["echo", nasty]


@pytest.mark.parametrize("engine,text", [("jinja2", "echo {{ v }}"), ("format", "echo {v}")])
def test_line_breaks_are_refused(engine, text):
    with pytest.raises(ConfigError, match="line break"):
        render_text(text, {"v": "ok\ntouch pwned"}, name="t", engine=engine)


def test_shell_safe_values_pass_unquoted_and_quote_handles_types():
    assert render_text("{{ v }}", {"v": ShellSafe("a b")}, name="t", engine="jinja2") == "a b"
    assert quote(None) == "''" and quote(True) == "true" and quote(3) == "3"


def test_old_style_template_renders_with_the_shipped_context():
    text = render(TEMPLATES / "old-style.sbatch", golden_context())
    assert "#SBATCH --cpus-per-task=8\n" in text and "#SBATCH --gres=gpu:2\n" in text
    assert "#SBATCH --time=04:00:00\n" in text
    assert "/opt/venvs/ft/bin/python -m finetune array-task '/plans/rus pol/jobs/0001/0a1b2c3d-0.index'" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_directives_extra_flags_and_multi_task_launcher():
    d = directives({"cpus_per_task": 2, "extra": {"mail-type": "END", "hold": True}}, "10", "/l/%A.out")
    assert d == ["--cpus-per-task=2", "--hold", "--mail-type=END", "--nodes=1", "--ntasks-per-node=1",
                 "--output=/l/%A.out", "--time=10"]
    ctx = script_context("j", Path("/p"), Path("/p/i"), {"nodes": 2, "ntasks_per_node": 4}, None, python="py")
    assert ctx["launcher"].startswith("srun ") and ctx["distributed"]
    assert "--kill-on-bad-exit=0" in ctx["launcher"] and "launch" not in ctx["launcher"]
    single = script_context("j", Path("/p"), Path("/p/i"), {}, None, python="py")
    assert single["launcher"] == "" and not single["distributed"]


def test_torchrun_launcher_one_task_per_node_with_the_nodes_cpus():
    slurm = {"nodes": 2, "ntasks_per_node": 4, "cpus_per_task": 3, "launcher": "torchrun"}
    d = directives(slurm, None, "/l/%A.out")
    assert "--cpus-per-task=12" in d and "--ntasks-per-node=1" in d and "--nodes=2" in d
    ctx = script_context("j", Path("/p"), Path("/p/i"), slurm, None, python="/v/py")
    words = shlex.split(ctx["launcher"])
    assert words[0] == "srun" and "--ntasks-per-node=1" in words
    assert words[words.index("/v/py"):words.index("/v/py") + 3] == ["/v/py", "-m", "finetune.compute.launch"]
    assert "--nproc-per-node=4" in words and "--rdzv-backend=c10d" in words and words[-1] == "--no-python"
    text = render(DEFAULT_TEMPLATE, ctx)
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    # one node, one task: no launcher, whatever the setting
    assert script_context("j", Path("/p"), Path("/p/i"), {"launcher": "torchrun"}, None)["launcher"] == ""


def test_unknown_launcher_is_a_problem_with_its_path():
    from finetune.login.submit import slurm_problems

    problems = slurm_problems({"launcher": "mpirun"}, "trials/x/config.json")
    assert [(p.path, p.message) for p in problems] == [
        ("$.slurm.launcher", 'must be one of srun, torchrun (got "mpirun") (did you mean srun?)')]  # the schema's


def test_cli_bad_template_exits_2_and_writes_nothing(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from submit_helpers import make_plan

    plan = tmp_path / "plan"
    make_plan(plan, 2)
    t = tmp_path / "broken.sbatch.j2"
    t.write_text("#!/bin/bash\n{{ undefined_var }}\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    (tmp_path / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/SBATCH_CALLED\necho 1\n")
    (tmp_path / "sbatch").chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan), "--template", str(t),
                           "--executor", "slurm", "--max-array-size", "10"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    assert str(t) in proc.stderr and "undefined_var" in proc.stderr
    assert not (plan / "manifest.json").exists() and not (plan / "jobs").exists()
    assert not (tmp_path / "SBATCH_CALLED").exists()
    proc = subprocess.run([sys.executable, "-m", "finetune", "submit", str(plan), "--template", "nope.j2"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--template" in proc.stderr and "nope.j2" in proc.stderr


def test_the_three_requeueing_scripts_lift_the_start_delay_with_the_one_snippet():
    """array.sbatch.j2, search.sbatch.j2 and the old-style requeue block all run render.py's
    LIFT_BEGIN_TIME, right before `scontrol requeue`, at their own indentation."""
    from finetune.login.render import LIFT_BEGIN_TIME, lift_begin_time, with_requeue_protocol

    ctx = golden_context()
    scripts = {
        "array": (render(DEFAULT_TEMPLATE, ctx), 2),
        "bundle": (render(DEFAULT_TEMPLATE, {**ctx, "per_task": 3}), 2),
        "search": (render(TEMPLATES / "search.sbatch.j2", {**ctx, "batch": "0001", "launcher_word": ""}), 2),
        "old-style": (with_requeue_protocol(render(TEMPLATES / "old-style.sbatch", ctx), grace=120,
                                            exit_requeue=layout.EXIT_REQUEUE), 4),
    }
    command = [line for line in LIFT_BEGIN_TIME.splitlines() if not line.startswith("#")]
    assert command[0].startswith("setsid bash -c ") and len(command) == 3
    for name, (text, indent) in scripts.items():
        block = " " * indent + lift_begin_time(indent) + "\n" + " " * indent + 'scontrol requeue "$SLURM_JOB_ID"\n'
        assert text.count(block) == 1, name
        assert text.count("lift-begin-time") == 1 and text.count("scontrol update jobid=") == 1, name
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, name
