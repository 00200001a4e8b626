"""Evaluation without retraining: a finished trial's saved model scored on another eval language
by an evaluation job (submit after an eval language was added, or `finetune evaluate`), with no
training step: result.json, metrics.jsonl and the model stay byte for byte, and collect reports
the new language."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_trainer import write_sib_slice

from finetune.analysis.results import collect, summary_csv_text
from finetune.cli import main
from finetune.login import evaluations
from finetune.login.plan import build_plan, load_plan, write_plan
from finetune.login.submit import submit


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _snapshot(trial):
    files = [trial / "result.json", trial / "metrics.jsonl", *sorted((trial / "model").iterdir())]
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def write_layers(folder, ckpt, tokenizer, data_root, cache, languages, evals, *, selection=None, slurm=None):
    """Config layers of a tiny real topic study (the shipped default and database underneath), and
    a grid training on Russian and evaluating on ``evals``: (layer files, grid file)."""
    assert ckpt.name == "ckpt.pt"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pair.json").write_text(json.dumps({
        "checkpoints": {"prefix": str(ckpt.parent.parent), "normal": ckpt.parent.name},
        "tokenizers": {"prefix": str(tokenizer.parent), "normal_prefix": tokenizer.name}}))
    (folder / "task.json").write_text(json.dumps({
        "task": "topic", "datasets": {lang: "sib200" for lang in languages},
        "data": {"mirrors": {"Davlan/sib200": str(data_root)}, "cache_dir": str(cache)},
        "hyperparameters": {"epochs": 1, "max_steps": 8, "batch_size": 16, "learning_rate": 2e-3},
        "training": {"eval_interval": 4, "device": "cpu", "num_workers": 0,
                     **({"selection": selection} if selection else {})},
        "slurm": {"cpus_per_task": 1, **(slurm or {})}}))
    grid = folder / f"grid-{'-'.join(evals)}.json"
    grid.write_text(json.dumps({"languages": {"train": "russian", "eval": list(evals)}}))
    return [str(folder / "pair.json"), str(folder / "task.json")], str(grid)


@pytest.fixture
def study(tmp_path, tiny_pretrained, sib200_dir):  # noqa: F811
    ckpt, tokenizer = tiny_pretrained
    data = tmp_path / "sib"
    for subset in ("rus_Cyrl", "pol_Latn"):
        write_sib_slice(data, sib200_dir, subset)
    return {"ckpt": ckpt, "tokenizer": tokenizer, "data": data, "cache": tmp_path / "cache", "conf": tmp_path / "conf"}


def plan_study(study, out, languages, evals, **kw):
    files, grid = write_layers(study["conf"], study["ckpt"], study["tokenizer"], study["data"], study["cache"],
                               languages, evals, **kw)
    return write_plan(build_plan(files, grid_config=grid, model_types=["normal"]), out)


def test_evaluation_jobs_score_the_saved_model_and_train_nothing(study, tmp_path, capsys):
    """Issue 17 item 5, one trained trial throughout (no training step after the first):
    `finetune evaluate` sends it as an evaluation job (local executor) scoring Russian again (the
    saved model is the best checkpoint: the reported numbers) and Polish from other layers; the
    layers gaining Polish keep the trial and find its score current; a model saved again makes
    its evaluations stale, and submit then sends the trial to be scored on Polish only."""
    out = tmp_path / "run"
    (tid,) = plan_study(study, out, ["russian"], ["russian"]).added
    report = submit(out, executor="local", parallel=1)
    assert report.submitted == [tid] and report.evaluating == []
    trial = out / "trials" / tid
    result = json.loads((trial / "result.json").read_text())
    assert set(result["metrics"]) == {"russian"}
    before = _snapshot(trial)

    files, _ = write_layers(tmp_path / "more", study["ckpt"], study["tokenizer"], study["data"], study["cache"],
                            ["russian", "polish"], ["russian", "polish"])
    capsys.readouterr()
    assert main(["evaluate", str(out), "--languages", "russian", "polish", "--config", *files,
                 "--executor", "local"]) == 0
    printed = capsys.readouterr().out
    assert f"{tid}: russian test macro_f1" in printed and "1 of them only evaluated" in printed
    assert _snapshot(trial) == before  # no training step: nothing of the run changed
    scored = json.loads((trial / "evaluations.json").read_text())
    for split in ("eval", "test"):
        assert scored["russian"][split] == pytest.approx(result["metrics"]["russian"][split], abs=1e-6)
    assert set(scored["polish"]) >= {"eval", "test"}
    assert scored["polish"]["model_stamp"] == evaluations.model_stamp(trial)
    assert (trial / "logits" / f"{tid}-polish-test.npz").is_file()
    assert not (trial / "evaluate.json").exists()  # the request is done
    assert len(json.loads((out / "manifest.json").read_text())["submissions"]) == 2  # training, evaluation

    # the layers gain Polish: the same trained model, so the same trial; its Polish score is current
    again = plan_study(study, out, ["russian", "polish"], ["russian", "polish"])
    assert again.added == [] and again.total == 1
    plan = load_plan(out)
    assert plan.trial(tid).eval_languages == ["polish", "russian"]
    assert evaluations.pending(trial, ["polish", "russian"], plan.groups[plan.trial(tid).group]) == []
    nothing = submit(out, executor="local", parallel=1)
    assert nothing.submitted == [] and nothing.finished == [tid]
    (row,) = collect(out).rows
    assert sorted(row.eval_languages) == ["polish", "russian"]
    assert row.metric("polish", "test", "macro_f1") == pytest.approx(scored["polish"]["test"]["macro_f1"])
    assert "normal,russian,polish" in summary_csv_text(collect(out))

    # a model saved again (as when the trial trains once more) makes its evaluations stale
    config = trial / "model" / "config.json"
    os.utime(config, ns=(config.stat().st_mtime_ns + 10**9,) * 2)
    assert set(evaluations.current_scores(trial)) == {"russian"}  # result.json's own score only
    (row,) = collect(out).rows
    assert row.metric("polish", "test", "macro_f1") is None  # never a stale number
    dry = submit(out, executor="local", dry_run=True)
    assert dry.evaluating == [tid] and "1 of them only evaluated" in dry.summary()
    report = submit(out, executor="local", parallel=1)
    assert report.submitted == [tid] and report.evaluating == [tid]
    assert "evaluating the saved model" in (trial / "log.txt").read_text()
    assert json.loads((trial / "result.json").read_text()) == result  # still not trained again
    rescored = json.loads((trial / "evaluations.json").read_text())
    assert rescored["polish"]["model_stamp"] == evaluations.model_stamp(trial)
    assert rescored["russian"] == scored["russian"]  # only the pending language was scored
    assert set(evaluations.current_scores(trial)) == {"russian", "polish"}


def test_each_language_trials_cannot_add_a_language(study, tmp_path, capsys):
    """The oracle protocol reports each language at its own best step: `finetune evaluate`
    refuses such trials (exit 2, nothing sent), and submit never sends them to be scored."""
    out = tmp_path / "run"
    (tid,) = plan_study(study, out, ["russian"], ["russian"], selection="each-language").added
    trial = out / "trials" / tid
    (trial / "model").mkdir(parents=True)
    (trial / "model" / "config.json").write_text("{}")
    (trial / "result.json").write_text(json.dumps({"state": "finished", "trial": tid, "metrics": {},
                                                   "selection": {"protocol": "each-language"}}))
    assert main(["evaluate", str(out), "--executor", "local"]) == 2
    assert "each-language" in capsys.readouterr().err
    assert not (out / "manifest.json").exists() and not (trial / "evaluate.json").exists()
    assert submit(out, executor="local", dry_run=True).finished == [tid]


def test_evaluate_refuses_unfinished_plans(tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "sources": [], "groups": {}, "trials": [
        {"id": "aaaaaaaaaaaa", "model_type": "normal", "train_languages": ["a"], "eval_languages": ["a"],
         "hyperparameters": {}, "group": "g"}]}))
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no finished trials to evaluate" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--trials", "bbbbbbbbbbbb"]) == 2
    assert "--trials: not in the plan: bbbbbbbbbbbb" in capsys.readouterr().err


def test_a_score_is_current_only_for_the_present_model_and_the_dataset_the_plan_names(tmp_path):
    """finetune.login.evaluations without any training: hand-written trial files."""
    trial = tmp_path / "trials" / "0a1b2c3d4e5f"
    (trial / "model").mkdir(parents=True)
    (trial / "model" / "config.json").write_text("{}")
    russian = {"dataset": "Davlan/sib200", "subset": "rus_Cyrl", "name": "sib200", "language": "russian",
               "path": "/data/a"}
    polish = {**russian, "subset": "pol_Latn", "language": "polish"}
    (trial / "config.json").write_text(json.dumps({"datasets": {"russian": russian}}))
    metrics = {"eval": {"macro_f1": 0.5}, "test": {"macro_f1": 0.4}}
    (trial / "result.json").write_text(json.dumps({"state": "finished", "metrics": {"russian": metrics}}))
    group = {"datasets": {"russian": {**russian, "path": "/elsewhere"}, "polish": polish}, "inputs": {"datasets": {}}}
    assert evaluations.pending(trial, ["polish", "russian"], group) == ["polish"]  # a mirror elsewhere: same data
    other = {**group, "datasets": {**group["datasets"], "russian": {**russian, "subset": "rus_Latn"}}}
    assert evaluations.pending(trial, ["polish", "russian"], other) == ["polish", "russian"]
    assert evaluations.current_scores(trial, expected=evaluations.expected_datasets(other, ["russian"])) == {}

    stamp = evaluations.model_stamp(trial)
    (trial / "evaluations.json").write_text(json.dumps({"polish": {
        "eval": {"macro_f1": 0.3}, "test": {"macro_f1": 0.2}, "model_stamp": stamp,
        "dataset": evaluations.dataset_key(polish), "fingerprint": None}}))
    assert evaluations.pending(trial, ["polish", "russian"], group) == []
    assert evaluations.current_scores(trial)["polish"]["test"] == {"macro_f1": 0.2}
    # the local copy of Polish changed (its content fingerprint): scored again
    changed = {**group, "inputs": {"datasets": {"polish": "0123456789abcdef"}}}
    assert evaluations.pending(trial, ["polish", "russian"], changed) == ["polish"]
    # an evaluation of this model replaces the training-time score of its language
    (trial / "evaluations.json").write_text(json.dumps({"russian": {
        "eval": {"macro_f1": 0.6}, "test": {"macro_f1": 0.7}, "model_stamp": stamp,
        "dataset": evaluations.dataset_key(russian), "fingerprint": None}}))
    assert evaluations.current_scores(trial)["russian"]["test"] == {"macro_f1": 0.7}
    # no saved model (a count stand-in, an old trial): nothing can be scored, nothing pending
    for f in (trial / "model").iterdir():
        f.unlink()
    assert evaluations.pending(trial, ["polish", "russian"], group) == []


def test_a_training_time_score_goes_stale_when_its_local_dataset_changes_under_the_same_name(study, tmp_path):
    """An eval-only language is not in the trial id, so its local files can change while the trial
    keeps its id: the frozen config.json records the content fingerprint the score was made from,
    and the changed data makes that score stale (an evaluation job scores it again)."""
    conf = study["conf"]
    files, grid = write_layers(conf, study["ckpt"], study["tokenizer"], study["data"], study["cache"],
                               ["russian", "polish"], ["russian", "polish"])
    shipped = Path(__file__).resolve().parent.parent / "config"
    shutil.copy(shipped / "default.json", conf / "default.json")
    db = json.loads((shipped / "language-database.json").read_text(encoding="utf-8"))
    for lang in ("russian", "polish"):  # the same data as a local dataset (not a hub mirror)
        db[lang]["topic"]["mine"] = {**db[lang]["topic"]["sib200"], "dataset": str(study["data"])}
    (conf / "language-database.json").write_text(json.dumps(db), encoding="utf-8")
    (conf / "local.json").write_text('{"datasets": {"russian": "mine", "polish": "mine"}}')
    files.append(str(conf / "local.json"))
    out = tmp_path / "plan"
    write_plan(build_plan(files, grid_config=grid, model_types=["normal"]), out)
    plan = load_plan(out)
    (trial,) = plan.trials
    config = plan.trial_config(trial)
    prints = plan.groups[trial.group]["inputs"]["datasets"]
    assert config["dataset_fingerprints"] == {"polish": prints["polish"], "russian": prints["russian"]}
    assert prints["polish"]  # a local dataset has a content fingerprint
    # the trial as its array task froze and trained it (hand-written: no training needed here)
    tdir = out / "trials" / trial.id
    (tdir / "model").mkdir(parents=True)
    (tdir / "model" / "config.json").write_text("{}")
    (tdir / "config.json").write_text(json.dumps(config))
    scores = {"eval": {"macro_f1": 0.5}, "test": {"macro_f1": 0.4}}
    (tdir / "result.json").write_text(json.dumps({"id": trial.id, "trial_id": trial.id, "state": "finished",
                                                  "metrics": {"russian": scores, "polish": scores}}))
    group = plan.groups[trial.group]
    assert evaluations.pending(tdir, ["polish", "russian"], group) == []

    test_tsv = study["data"] / "pol_Latn" / "test.tsv"
    rows = test_tsv.read_text(encoding="utf-8").splitlines()
    test_tsv.write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")  # one test row fewer
    write_plan(build_plan(files, grid_config=grid, model_types=["normal"]), out)
    replanned = load_plan(out)
    assert [t.id for t in replanned.trials] == [trial.id]  # same trained model: no retraining
    group = replanned.groups[replanned.trials[0].group]
    assert group["inputs"]["datasets"]["polish"] != prints["polish"]
    assert evaluations.pending(tdir, ["polish", "russian"], group) == ["polish"]
    assert set(evaluations.current_scores(tdir, expected=evaluations.expected_datasets(group, ["polish", "russian"]))) \
        == {"russian"}
