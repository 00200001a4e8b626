"""The trainer's evaluation seam: a search trial reports each evaluation to its study and stops
when the pruner says so (tiny nanoGPT, a slice of real SIB-200 Russian)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer import make_trial, run_in_process, trial_config, write_sib_slice

from finetune.login import search as S

SPEC = {"version": 1, "sampler": "random", "trials": 4, "workers": 1, "pruner": "successive-halving",
        "seed": None, "startup_trials": 5, "reduction_factor": 3, "enqueue": [], "stale_after_s": 600,
        "metric": "macro_f1", "direction": "maximize", "params": {}, "min_resource": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_pretrained, sib200_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("search-trainer")
    return root, tiny_pretrained, write_sib_slice(root / "sib", sib200_dir)


def search_trial(data, name: str, rival: float | None, **over) -> tuple[Path, int]:
    """A plan folder with a study (and a finished rival with ``rival`` at step 4), and a trial of it."""
    import optuna
    from optuna.trial import TrialState

    root, (ckpt, tokenizer), sib = data
    plan = root / name
    S.spec_path(plan).parent.mkdir(parents=True)
    S.spec_path(plan).write_text(json.dumps(SPEC))
    study = S.open_study(plan, SPEC)
    if rival is not None:
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=rival, intermediate_values={4: rival},
                                                  system_attrs={"completed_rung_0": rival}))
    number = study.ask().number
    config = trial_config(ckpt, tokenizer, sib, root / "cache", "t-" + name,
                          search={"number": number, "worker": "w", "metric": "macro_f1"}, plan_dir=str(plan), **over)
    return make_trial(plan / "trials", config), number


def test_a_trial_worse_than_its_rival_is_pruned_at_its_first_evaluation(data):
    trial, number = search_trial(data, "pruned", rival=1.0)
    assert run_in_process(trial) == 0
    result = json.loads((trial / "result.json").read_text())
    state = json.loads((trial / "state.json").read_text())
    assert result["state"] == "pruned" and result["pruned_step"] == 4 and state["state"] == "pruned"
    assert set(result["metrics"]["russian"]) == {"eval"} and not (trial / "checkpoints").exists()
    assert [json.loads(line)["step"] for line in (trial / "metrics.jsonl").read_text().splitlines()] == [4]
    reported = S.open_study(trial.parent.parent, SPEC).get_trials()[number].intermediate_values
    assert list(reported) == [4] and reported[4] == result["metrics"]["russian"]["eval"]["macro_f1"]


def test_the_first_trial_of_a_study_runs_to_the_end(data):
    trial, number = search_trial(data, "first", rival=None)
    assert run_in_process(trial) == 0
    result = json.loads((trial / "result.json").read_text())
    assert result["state"] == "finished" and "test" in result["metrics"]["russian"]
    reported = S.open_study(trial.parent.parent, SPEC).get_trials()[number].intermediate_values
    assert list(reported) == [4, 8, 12, 16]


def _journal_ops(plan: Path, op: str) -> list[dict]:
    """The study journal's operations of one kind (Optuna's JournalOperation name)."""
    from optuna.storages.journal._storage import JournalOperation

    code = JournalOperation[op].value
    lines = (S.search_dir(plan) / S.JOURNAL_FILE).read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry.get("op_code") == code]


def test_two_ranks_stop_together_on_rank_0s_word(data):
    """A search trial on two processes (torchrun, gloo): rank 0 alone reports the evaluation and
    asks the pruner (one report in the study's journal); both ranks stop at that step and exit 0,
    and the trial is pruned there, as on one process."""
    trial, number = search_trial(data, "two-ranks", rival=1.0, hyperparameters={"micro_batch_size": 8},
                                 training={"strategy": "ddp"})
    plan = trial.parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "finetune", "train", str(trial)], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((trial / "result.json").read_text())
    assert result["state"] == "pruned" and result["pruned_step"] == 4
    assert json.loads((trial / "state.json").read_text())["state"] == "pruned"
    reported = S.open_study(plan, SPEC).get_trials()[number]
    assert list(reported.intermediate_values) == [4]
    reports = [e for e in _journal_ops(plan, "SET_TRIAL_INTERMEDIATE_VALUE") if e.get("step") == 4]
    assert len(reports) == 1  # rank 0 only
    assert [json.loads(line)["step"] for line in (trial / "metrics.jsonl").read_text().splitlines()] == [4]
