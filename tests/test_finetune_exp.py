"""scripts/finetune-exp.py: flags, clean errors (exit 2, nothing written), one real tiny run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "finetune-exp.py"
CONFIGS = [str(REPO / "config" / n) for n in ("finetune-rus-pol.json", "finetune-rus-pol-topic.json", "data-local.json")]


def _module():
    spec = importlib.util.spec_from_file_location("finetune_exp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_help_has_examples(tmp_path):
    done = _script("--help", cwd=tmp_path)
    assert done.returncode == 0
    for flag in ("--train-langs", "--eval-langs", "--model-type", "--cpus", "--logit-directory", "--dump-logits"):
        assert flag in done.stdout
    assert "examples:" in done.stdout and "finetune-exp.py 17" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1", *CONFIGS, "--eval-langs", "russian", "--model-type", "normal"], "--train-langs"),
        (["1", *CONFIGS, "--train-langs", "russian", "--eval-langs", "russian", "--model-type", "bpe"], "invalid choice"),
        (["1", *CONFIGS, "--train-langs", "russain", "--eval-langs", "russian", "--model-type", "normal"],
         "--train-langs: 'russain' is not a language of the config ($.datasets has polish, russian); "
         "did you mean 'russian'?"),
        (["1", *CONFIGS, "--train-langs", "russian", "--eval-langs", "czech", "--model-type", "normal"],
         "--eval-langs: 'czech' is not a language"),
        (["1/..", *CONFIGS, "--train-langs", "russian", "--eval-langs", "russian", "--model-type", "normal"],
         "JOB_NUMBER: '1/..'"),
        (["1", *CONFIGS, "--train-langs", "russian", "--eval-langs", "russian", "--model-type", "normal",
          "--cpus", "0"], "--cpus: must be at least 1"),
        (["1", "nope.json", "--train-langs", "russian", "--eval-langs", "russian", "--model-type", "normal"],
         "CONFIG: nope.json: no such file"),
    ],
)
def test_bad_flags_exit_2_and_write_nothing(tmp_path, args, message):
    done = _script(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_one_tiny_experiment_end_to_end(tmp_path, tiny_pretrained, capsys):  # noqa: F811
    ckpt, tokenizer = tiny_pretrained
    exp = _module()
    argv = ["42", *CONFIGS, "--train-langs", "polish", "--eval-langs", "polish", "russian", "--model-type", "normal",
            "--cpus", "1", "--logit-directory", str(tmp_path / "logits"), "--output-dir", str(tmp_path / "out"),
            "--set", f"checkpoints.prefix={ckpt.parent.parent}", "--set", f"checkpoints.normal={ckpt.parent.name}",
            "--set", f"tokenizers.prefix={Path(tokenizer).parent}", "--set", f"tokenizers.normal_prefix={Path(tokenizer).name}",
            "--set", "hyperparameters.max_steps=3", "--set", "training.eval_interval=3",
            "--set", "training.max_eval_samples=30", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    args = exp.build_parser().parse_args(argv)
    assert exp.main(args) == 0
    (trial,) = (tmp_path / "out" / "trials").iterdir()
    config = json.loads((trial / "config.json").read_text())
    assert (config["train_languages"], config["eval_languages"], config["model_type"]) == (
        ["polish"], ["polish", "russian"], "normal")
    result = json.loads((trial / "result.json").read_text())
    assert set(result["metrics"]) == {"polish", "russian"} and result["trial"] == trial.name
    # logits named by trial id: runs of one day never overwrite each other
    assert sorted(p.name for p in (tmp_path / "logits").iterdir()) == sorted(
        f"{trial.name}-{lang}-{split}.npz" for lang in ("polish", "russian") for split in ("eval", "test"))
    # rerunning the same command finds the trial finished and leaves it alone
    before = (trial / "result.json").read_bytes()
    capsys.readouterr()
    assert exp.main(exp.build_parser().parse_args(argv)) == 0
    assert "already finished" in capsys.readouterr().err
    assert (trial / "result.json").read_bytes() == before
    assert len(list((tmp_path / "out" / "trials").iterdir())) == 1
