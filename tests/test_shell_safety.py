"""No config value reaches a job script as shell code.

Every field that can reach a script (the slurm strings and extra flags, the plan directory, the
python path) gets spaces, quotes, $(...), backticks and ; ; the rendered scripts (the default
jinja2 template and the old-style one) then run under bash with stub sbatch/srun/scontrol/squeue
and a stub python that records its argv. Nothing may execute: no marker file appears, and the
stub sees exactly one argument per value. Line breaks are refused before anything is written.
(``slurm.setup`` lines are shell code on purpose, like ``module load``; they are not data.)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.errors import ConfigError
from finetune.login.submit import submit

sys.path.insert(0, str(Path(__file__).parent))
from submit_helpers import make_plan  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def payloads(marker: Path) -> list[str]:
    m = shlex.quote(str(marker))
    return [
        f"a b $(touch {m}1)",
        f"`touch {m}2`",
        f"x; touch {m}3; y",
        f"it's'; touch {m}4; '",
        f'q"; touch {m}5; "',
        f"$$ ${{HOME}} $((1+1)) \\$(touch {m}6) & touch {m}7 | cat > {m}8",
    ]


def stubs(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "srun", "scontrol", "squeue", "python", "python3"):
        body = f'printf "%s\\0" {name} "$@" >> {shlex.quote(str(log))}; printf "\\n" >> {shlex.quote(str(log))}\n'
        if name == "squeue":
            body += "echo PENDING\n"
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)


def calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.strip("\n").rstrip("\0").split("\0") for line in log.read_text().split("\0\n") if line.strip()]


@pytest.mark.parametrize("template", ["array.sbatch.j2", "old-style.sbatch"])
def test_nasty_values_never_execute(tmp_path, template):
    marker = tmp_path / "PWNED"
    nasty = payloads(marker)
    sandbox = tmp_path / "dir with 'quotes' $(touch PWNED_dir) `x`; y"
    bin_dir = sandbox / "bin $(touch PWNED_bin)"
    log = tmp_path / "calls.log"
    stubs(bin_dir, log)
    plan = sandbox / "plan $(touch PWNED_plan) `touch PWNED_bt`; touch PWNED_semi"
    slurm = {"account": nasty[0], "partition": nasty[1], "qos": nasty[2], "output": str(tmp_path / nasty[3]),
             "extra": {"comment": nasty[4], "constraint": nasty[5], "wckey": 42}}
    ids = make_plan(plan, 1, slurm=slurm)
    report = submit(plan, executor="slurm", template=REPO / "jobs" / "templates" / template, dry_run=True,
                    max_array_size=100, python=str(bin_dir / "python"))
    script = report.arrays[0].script_path
    text = script.read_text()
    if template.endswith(".j2"):  # every #SBATCH value comes back whole through shell-style unquoting
        words = [shlex.split(line[len("#SBATCH "):]) for line in text.splitlines() if line.startswith("#SBATCH ")]
        values = {w[0].split("=", 1)[0]: w[0].split("=", 1)[1] for w in words if "=" in w[0]}
        assert all(len(w) == 1 for w in words)
        assert values["--account"] == nasty[0] and values["--partition"] == nasty[1]
        assert values["--qos"] == nasty[2] and values["--comment"] == nasty[4] and values["--constraint"] == nasty[5]

    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "7", "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(script)], cwd=sandbox, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + (plan / "trials" / ids[0] / "log.txt").read_text()

    made = sorted(p.name for p in tmp_path.rglob("*PWNED*")) + sorted(p.name for p in Path.cwd().glob("PWNED*"))
    assert [m for m in made if m.startswith("PWNED")] == []
    trial_dir = str(plan / "trials" / ids[0])
    index = str(report.arrays[0].index_path)
    prepare = ["python", "-m", "finetune", "array-task", index, "--task-id", "0", "--prepare"]
    expected = [prepare, ["python", "-m", "finetune", "train", trial_dir]] if template.endswith(".j2") else \
               [["python", "-m", "finetune", "array-task", index]]
    assert calls(log) == expected


def test_the_array_task_refuses_a_tampered_index(tmp_path):
    log = tmp_path / "calls.log"
    stubs(tmp_path / "bin", log)
    plan = tmp_path / "plan"
    make_plan(plan, 1)
    report = submit(plan, executor="slurm", dry_run=True, max_array_size=10, python=str(tmp_path / "bin" / "python"))
    job = report.arrays[0]
    job.index_path.write_text("../../../tmp/x; touch PWNED\n")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0"}
    proc = subprocess.run(["bash", str(job.script_path)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "no trial on line 1" in proc.stderr
    assert calls(log) == [] and not list(tmp_path.rglob("PWNED*"))


@pytest.mark.parametrize("field", ["account", "partition", "qos", "output"])
def test_line_breaks_are_refused_with_file_and_path(tmp_path, field):
    plan = tmp_path / "plan"
    ids = make_plan(plan, 2, per_trial={1: {"slurm": {field: "ok\ntouch PWNED"}}})
    with pytest.raises(ConfigError) as e:
        submit(plan, executor="slurm", max_array_size=10)
    msg = str(e.value)
    assert f"$.slurm.{field}" in msg and str(plan / "trials" / ids[1] / "config.json") in msg
    assert not (plan / "jobs").exists() and not (plan / "manifest.json").exists()


def test_bad_extra_flag_names_and_values_are_refused(tmp_path):
    plan = tmp_path / "plan"
    make_plan(plan, 1, slurm={"extra": {"x; touch PWNED": "1", "comment": "a\nb"}, "mem": "8 G"})
    with pytest.raises(ConfigError) as e:
        submit(plan, executor="slurm", max_array_size=10)
    msg = str(e.value)
    assert '$.slurm.extra["x; touch PWNED"]' in msg and "$.slurm.extra.comment" in msg and "$.slurm.mem" in msg


def test_provenance_names_the_layer_that_set_the_value(tmp_path):
    plan = tmp_path / "plan"
    make_plan(plan, 1, per_trial={0: {"slurm": {"partition": "a\nb"},
                                       "provenance": {"$.slurm.partition": "config/cluster.json"}}})
    with pytest.raises(ConfigError, match=r"config/cluster.json: \$\.slurm\.partition"):
        submit(plan, executor="slurm", max_array_size=10)
    assert json.loads((plan / "plan.json").read_text())["version"] == 1
    assert not os.path.exists(plan / "manifest.json")
