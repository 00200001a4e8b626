"""Seeds as replicas (summary.csv, best.csv: choice by the mean over seeds), zero-shot selection,
and the pooled comparison of two conditions, on plan dirs written by hand from the documented files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from finetune.analysis.comparison import compare_conditions, comparison_text, parse_condition
from finetune.analysis.plots import cell_text, transfer_matrix
from finetune.analysis.predictions import majority_baseline
from finetune.analysis.results import best_csv_text, collect, markdown_text, summary_csv_text
from finetune.analysis.significance import Stratum, scores, stratified_test
from finetune.cli import main
from finetune.errors import UsageError
from finetune.layout import logits_name

METRICS = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1")


def _split(f1: float) -> dict:
    return {"loss": round(1 - f1, 6), "accuracy": f1, "macro_precision": f1, "macro_recall": f1, "macro_f1": f1}


def write_plan(plan_dir: Path, trials: list[dict], *, selection: str | None = None) -> Path:
    """trials: {id, model_type, train, evals, hyper, scores={lang: (eval_f1, test_f1)} or None (missing),
    predictions={lang: (predicted, labels)} for the test split}."""
    plan = {"version": 1, "sources": [], "groups": {}, "trials": []}
    if selection:
        plan["groups"]["g"] = {"config": {"training": {"selection": selection}}}
    for t in trials:
        entry = {"id": t["id"], "model_type": t["model_type"], "train_languages": t["train"],
                 "eval_languages": t["evals"], "hyperparameters": {"batch_size": 8, **t["hyper"]}, "group": "g"}
        plan["trials"].append(entry)
        if t.get("scores") is None:
            continue
        tdir = plan_dir / "trials" / t["id"]
        tdir.mkdir(parents=True)
        result = {"state": "finished", "trial": t["id"], "model_type": t["model_type"],
                  "train_languages": t["train"], "eval_languages": t["evals"],
                  "hyperparameters": entry["hyperparameters"],
                  "metrics": {lang: {"eval": _split(e), "test": _split(x)} for lang, (e, x) in t["scores"].items()}}
        (tdir / "result.json").write_text(json.dumps(result))
        for lang, (pred, labels) in (t.get("predictions") or {}).items():
            (tdir / "logits").mkdir(exist_ok=True)
            logits = np.eye(int(max(pred.max(), labels.max())) + 1, dtype=np.float32)[pred]
            np.savez(tdir / "logits" / logits_name(t["id"], lang, "test"), logits=logits, labels=labels)
    (plan_dir / "plan.json").write_text(json.dumps(plan))
    return plan_dir


def seed_plan(plan_dir: Path) -> Path:
    """Train polish, eval polish. lr 1e-4: steady (eval .50 .52 .54); lr 1e-3: one lucky seed (eval
    .70 .30 .35, mean .45). By the best single seed 1e-3 wins; by the mean 1e-4 does."""
    steady = {1: (0.50, 0.40), 2: (0.52, 0.42), 3: (0.54, 0.44)}
    lucky = {1: (0.70, 0.60), 2: (0.30, 0.20), 3: (0.35, 0.25)}
    trials = []
    for lr, runs, prefix in ((1e-4, steady, "s"), (1e-3, lucky, "l")):
        for seed, scores_ in runs.items():
            trials.append({"id": f"{prefix}{seed}", "model_type": "normal", "train": ["polish"], "evals": ["polish"],
                           "hyper": {"learning_rate": lr, "seed": seed}, "scores": {"polish": scores_}})
    trials.append({"id": "s4", "model_type": "normal", "train": ["polish"], "evals": ["polish"],
                   "hyper": {"learning_rate": 1e-4, "seed": 4}, "scores": None})  # planned, not finished
    return write_plan(plan_dir, trials)


def test_choice_by_mean_over_seeds_not_by_the_best_seed(tmp_path):
    table = collect(seed_plan(tmp_path))
    assert table.varying == ["learning_rate", "seed"] and table.config_keys == ["learning_rate"]
    cell = table.best_cell("normal", "polish", "polish")
    assert cell.hyperparameters == {"learning_rate": 1e-4}
    assert cell.trial_ids == ["s1", "s2", "s3"] and cell.seeds == [1, 2, 3] and cell.n_seeds == 3
    assert cell.selection_value == pytest.approx(0.52)
    assert cell.test.mean == pytest.approx(0.42) and cell.test.std == pytest.approx(0.02)
    assert (cell.finished, cell.total) == (6, 7)
    # the lucky seed alone would have won
    best_single = max((r for r in table.rows if r.state == "finished"), key=lambda r: r.metric("polish", "eval", "macro_f1"))
    assert best_single.trial_id == "l1"


def test_summary_and_best_csv_exactly(tmp_path):
    table = collect(seed_plan(tmp_path))
    rows = list(csv.reader(io.StringIO(summary_csv_text(table))))
    head = ["model_type", "train_set", "eval_language", "learning_rate", "n_seeds"]
    head += [f"{split}/{m}/{what}" for split in ("eval", "test")
             for m in ("macro_f1", "accuracy", "macro_precision", "macro_recall", "loss") for what in ("mean", "std")]
    assert rows[0] == head
    assert len(rows) == 3  # two configurations x one eval language
    steady, lucky = (dict(zip(head, r, strict=True)) for r in rows[1:])
    assert (steady["learning_rate"], steady["n_seeds"]) == ("0.0001", "3")
    assert (steady["eval/macro_f1/mean"], steady["eval/macro_f1/std"]) == ("0.5200", "0.0200")
    assert (steady["test/loss/mean"], steady["test/loss/std"]) == ("0.5800", "0.0200")
    assert (lucky["learning_rate"], lucky["n_seeds"]) == ("0.001", "3")
    assert lucky["eval/macro_f1/mean"] == "0.4500" and lucky["test/macro_f1/mean"] == "0.3500"
    assert lucky["eval/macro_f1/std"] == f"{np.std([0.70, 0.30, 0.35], ddof=1):.4f}"

    assert best_csv_text(table) == (
        "model_type,train_set,eval_language,learning_rate,n_seeds,eval/macro_f1/mean,test/macro_f1/mean,"
        "test/macro_f1/std,selection\n"
        "normal,polish,polish,0.0001,3,0.5200,0.4200,0.0200,train-languages\n"
    )
    md = markdown_text(table)
    assert "| normal | polish | polish | 0.0001 | 1, 2, 3 | 0.5200 ± 0.0200 (n=3) | 0.4200 ± 0.0200 (n=3) |" in md
    assert "| normal | polish | polish | learning_rate=0.0001 | s1, s2, s3 | 0.5200 |" in md


def test_loss_is_minimised_over_the_mean(tmp_path):
    table = collect(seed_plan(tmp_path), metric="loss")
    cell = table.best_cell("normal", "polish", "polish")
    assert cell.hyperparameters == {"learning_rate": 1e-4} and cell.selection_value == pytest.approx(0.48)


def test_a_single_seed_has_no_std(tmp_path):
    write_plan(tmp_path, [{"id": "x", "model_type": "ipa", "train": ["polish"], "evals": ["polish"],
                           "hyper": {"learning_rate": 1e-4}, "scores": {"polish": (0.5, 0.4)}}])
    table = collect(tmp_path)
    rows = list(csv.DictReader(io.StringIO(summary_csv_text(table))))
    assert rows[0]["n_seeds"] == "1" and rows[0]["test/macro_f1/mean"] == "0.4000" and rows[0]["test/macro_f1/std"] == ""
    assert cell_text(0.4, None, 1) == "0.400\nn=1"
    assert cell_text(0.4, 0.0123, 3, "*") == "0.400*\n±0.012 n=3"


def transfer_plan(plan_dir: Path, selection: str | None = None) -> Path:
    """Train polish, eval polish and russian. Config A (lr 1e-4) is better on polish's dev set,
    config B (lr 1e-3) on russian's: zero-shot picks A for the russian cell, the oracle B."""
    trials = []
    for lr, pol, rus, prefix in ((1e-4, (0.60, 0.58), (0.30, 0.25), "a"), (1e-3, (0.50, 0.49), (0.40, 0.35), "b")):
        for seed in (1, 2):
            trials.append({"id": f"{prefix}{seed}", "model_type": "normal", "train": ["polish"],
                           "evals": ["polish", "russian"], "hyper": {"learning_rate": lr, "seed": seed},
                           "scores": {"polish": pol, "russian": rus}})
    # the union: A's mean over both dev sets (0.60+0.30)/2 = .45 < B's (0.50+0.45)/2 = .475
    for lr, pol, rus, prefix in ((1e-4, (0.60, 0.6), (0.30, 0.3), "u"), (1e-3, (0.50, 0.5), (0.45, 0.45), "v")):
        trials.append({"id": f"{prefix}1", "model_type": "normal", "train": ["polish", "russian"],
                       "evals": ["polish", "russian"], "hyper": {"learning_rate": lr, "seed": 1},
                       "scores": {"polish": pol, "russian": rus}})
    return write_plan(plan_dir, trials, selection=selection)


def test_zero_shot_selection_differs_from_the_oracle(tmp_path):
    zero = collect(transfer_plan(tmp_path / "z"))
    assert zero.selection == "train-languages"
    cell = zero.best_cell("normal", "polish", "russian")
    assert cell.trial_ids == ["a1", "a2"] and cell.test.mean == pytest.approx(0.25)
    assert cell.selection_value == pytest.approx(0.60)  # polish's dev set chose
    union = zero.best_cell("normal", "polish+russian", "polish")
    assert union.trial_ids == ["v1"] and union.selection_value == pytest.approx(0.475)

    oracle = collect(transfer_plan(tmp_path / "o"), selection="each-language")
    cell = oracle.best_cell("normal", "polish", "russian")
    assert cell.trial_ids == ["b1", "b2"] and cell.test.mean == pytest.approx(0.35)
    assert oracle.best_cell("normal", "polish", "polish").trial_ids == ["a1", "a2"]
    assert oracle.best_cell("normal", "polish+russian", "polish").trial_ids == ["u1"]

    # the plan's training.selection is the default; outputs name the protocol
    assert collect(transfer_plan(tmp_path / "p", "each-language")).selection == "each-language"
    assert "oracle: chosen on each target language's eval split" in markdown_text(oracle)
    assert best_csv_text(oracle).splitlines()[1].endswith(",each-language")
    assert "zero-shot" in transfer_matrix(zero, with_baselines=False).protocol


def test_zero_shot_needs_the_training_languages_scored(tmp_path):
    write_plan(tmp_path, [{"id": "x", "model_type": "normal", "train": ["polish"], "evals": ["russian"],
                           "hyper": {"learning_rate": 1e-4}, "scores": {"russian": (0.5, 0.4)}}])
    zero = collect(tmp_path)
    assert zero.best == [] and "no finished configuration has eval macro_f1 on every training language" in zero.unselectable[0]
    assert "Cells without a choice" in markdown_text(zero)
    assert collect(tmp_path, selection="each-language").best_cell("normal", "polish", "russian").trial_id == "x"
    with pytest.raises(UsageError, match="--selection: unknown protocol 'oracle'"):
        collect(tmp_path, selection="oracle")


# --- the pooled test ---------------------------------------------------------------------------------


def test_pooled_identical_conditions_p_near_one():
    rng = np.random.default_rng(0)
    strata = []
    for _ in range(3):
        y = rng.integers(0, 5, size=200)
        p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, size=200))
        strata.append(Stratum(p, p, y, "same"))
    r = stratified_test(strata, rounds=500)
    assert r.p_value == 1.0 and r.difference == 0.0 and (r.ci_low, r.ci_high) == (0.0, 0.0)
    assert r.strata == 3 and r.examples == 600


def _small_gain(seeds: int, n: int, rng) -> list[Stratum]:
    """A right 62% of the time, B 60%, independently, on the same examples each seed."""
    y = rng.integers(0, 4, size=n)
    out = []
    for _ in range(seeds):
        wrong = (y + 1 + rng.integers(0, 3, size=n)) % 4
        a = np.where(rng.random(n) < 0.62, y, wrong)
        b = np.where(rng.random(n) < 0.60, y, wrong)
        out.append(Stratum(a, b, y, "test"))
    return out


def test_pooled_consistent_small_gain_gives_a_small_p_no_single_seed_does():
    strata = _small_gain(10, 2000, np.random.default_rng(11))
    per_seed = [stratified_test([s], metric="accuracy", rounds=200, seed=i).p_value for i, s in enumerate(strata)]
    assert sorted(per_seed)[len(per_seed) // 2] > 0.05  # most seeds alone show nothing
    r = stratified_test(strata, metric="accuracy", rounds=1000, seed=1)
    assert r.p_value < 0.005
    assert 0.0 < r.ci_low < r.difference < r.ci_high
    assert r.ci_low < 0.02 < r.ci_high  # the true gain
    # the interval is about +-1.96 standard errors of a paired mean difference
    d = np.concatenate([(s.preds_a == s.labels).astype(float) - (s.preds_b == s.labels) for s in strata])
    half = 1.96 * d.std() / np.sqrt(d.size)
    assert (r.ci_high - r.ci_low) / 2 == pytest.approx(half, rel=0.35)


def test_pooled_test_is_calibrated_under_the_null():
    rng = np.random.default_rng(5)
    small = 0
    for i in range(60):
        y = rng.integers(0, 3, size=60)
        strata = [Stratum(np.where(rng.random(60) < 0.5, y, 0), np.where(rng.random(60) < 0.5, y, 0), y, "t")
                  for _ in range(3)]
        small += stratified_test(strata, metric="accuracy", rounds=200, seed=i).p_value < 0.05
    assert small / 60 < 0.15


def test_bootstrap_macro_f1_rows_match_the_metric():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=(5, 30))
    p = rng.integers(0, 4, size=(5, 30))
    got = scores(p, y, "macro_f1")
    want = [scores(p[i], y[i], "macro_f1")[0] for i in range(5)]
    assert got == pytest.approx(want)


def test_majority_baseline():
    labels = np.array([0, 0, 0, 1, 2, 2])
    assert majority_baseline(labels, "accuracy") == pytest.approx(0.5)
    assert majority_baseline(labels, "macro_f1") == pytest.approx(scores(np.zeros(6, int), labels, "macro_f1")[0])
    assert majority_baseline(labels, "loss") is None


# --- conditions of a plan ----------------------------------------------------------------------------


def matrix_plan(plan_dir: Path, *, keep: bool = True) -> Path:
    """normal vs ipa, train czech / slovak, eval both, 3 seeds, 400 test examples per language.
    IPA is better by a consistent margin on czech->slovak only; elsewhere the two are the same system."""
    rng = np.random.default_rng(21)
    labels = {lang: rng.integers(0, 7, size=400) for lang in ("czech", "slovak")}
    trials = []
    for train in ("czech", "slovak"):
        for seed in (1, 2, 3):
            base = {lang: np.where(rng.random(400) < 0.55, y, (y + 1) % 7) for lang, y in labels.items()}
            for mt in ("normal", "ipa"):
                preds = dict(base)
                if mt == "ipa" and train == "czech":
                    y = labels["slovak"]
                    preds["slovak"] = np.where(rng.random(400) < 0.25, y, base["slovak"])
                scores_ = {lang: (0.5, float((preds[lang] == labels[lang]).mean())) for lang in labels}
                trials.append({"id": f"{mt[0]}{train[0]}{seed}", "model_type": mt, "train": [train],
                               "evals": ["czech", "slovak"], "hyper": {"learning_rate": 1e-4, "seed": seed},
                               "scores": scores_,
                               "predictions": {lang: (preds[lang], labels[lang]) for lang in labels} if keep else {}})
    return write_plan(plan_dir, trials)


def test_ipa_vs_normal_per_cell_and_pooled(tmp_path):
    table = collect(matrix_plan(tmp_path), metric="accuracy")
    cmp = compare_conditions(table, parse_condition("model_type=ipa", "--a"), parse_condition("model_type=normal", "--b"),
                             rounds=1000)
    assert [c.label for c in cmp.cells] == ["train czech, eval czech", "train czech, eval slovak",
                                            "train slovak, eval czech", "train slovak, eval slovak"]
    gain = cmp.cell(train_set="czech", language="slovak")
    assert gain.seeds == [1, 2, 3] and gain.a.trial_ids == ["ic1", "ic2", "ic3"] and gain.b.trial_ids == ["nc1", "nc2", "nc3"]
    assert gain.result.difference > 0.05 and gain.result.p_value < 0.01 and gain.p_holm < 0.01
    assert gain.result.ci_low > 0
    same = cmp.cell(train_set="slovak", language="czech")
    assert same.result.p_value == 1.0 and same.result.difference == 0.0
    assert set(cmp.pooled) == {"all cells", "cross-language cells", "in-language cells"}
    assert cmp.pooled["all cells"].strata == 12 and cmp.pooled["in-language cells"].p_value == 1.0
    assert cmp.pooled["all cells"].difference == pytest.approx(gain.result.difference / 4)
    text = comparison_text(cmp)
    assert "model_type=ipa vs model_type=normal: test accuracy" in text and "Pooled over all cells (12 strata" in text

    m = transfer_matrix(table, comparison=cmp)
    assert m.marks["ipa"] == [["", "*"], ["", ""]] and m.marks["normal"] == [["", ""], ["", ""]]
    assert "Holm over 4 cells" in m.mark_legend
    assert m.baselines["slovak"] == pytest.approx(majority_baseline(np.load(
        tmp_path / "trials" / "nc1" / "logits" / "nc1-slovak-test.npz")["labels"], "accuracy"))


def test_missing_predictions_name_the_trials_and_the_way_out(tmp_path):
    table = collect(matrix_plan(tmp_path, keep=False))
    a, b = parse_condition("model_type=ipa", "--a"), parse_condition("model_type=normal", "--b")
    with pytest.raises(UsageError) as e:
        compare_conditions(table, a, b, rounds=10)
    msg = str(e.value)
    assert "12 trial(s) kept no per-example predictions on the test split" in msg
    assert "ic1 (czech, slovak)" in msg and "finetune evaluate" in msg
    cmp = compare_conditions(table, a, b, rounds=10, allow_missing=True)
    assert cmp.cells == [] and len(cmp.untested) == 4 and "no predictions kept by ic1, ic2, ic3, nc1, nc2, nc3" in cmp.untested[0]


@pytest.mark.parametrize("text,error", [
    ("seed=1", "'seed' is a replica"),
    ("model_type", "expected KEY=VALUE"),
])
def test_bad_conditions(text, error):
    with pytest.raises(UsageError, match=error):
        parse_condition(text, "--a")


def test_cli_significance_on_a_plan_and_collect_marks(tmp_path, capsys):
    matrix_plan(tmp_path)
    assert main(["significance", str(tmp_path), "--metric", "accuracy", "--rounds", "300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a"] == "model_type=ipa" and len(out["cells"]) == 4 and out["cells"][1]["p_value"] < 0.01
    assert main(["significance", str(tmp_path), "--a", "learning_rate=1e-4", "--b", "learning_rate=1e-3"]) == 2
    assert "--b: no finished trials match 'learning_rate=1e-3'" in capsys.readouterr().err
    assert main(["collect", str(tmp_path), "--plots", "--metric", "accuracy", "--rounds", "300", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote " + str(tmp_path / "significance.md") in out
    assert (tmp_path / "plots" / "transfer-heatmap.png").stat().st_size > 10_000
    for name in ("summary.csv", "best.csv", "results.md", "results.csv"):
        assert (tmp_path / name).is_file()
    assert "| train czech, eval slovak | 3 |" in (tmp_path / "significance.md").read_text()


def test_cli_collect_notes_missing_predictions(tmp_path, capsys):
    matrix_plan(tmp_path, keep=False)
    assert main(["collect", str(tmp_path), "--plots", "--quiet", "--rounds", "10"]) == 0
    out = capsys.readouterr().out
    assert "note: 4 cell(s) untested for lack of per-example predictions" in out
