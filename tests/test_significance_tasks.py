"""Plan-level pooled significance for question answering (exact_match, f1 per question) and causal
LM (loss, perplexity: token-weighted over blocks, lower is better), like classification's: the
stratified test on per-example scores, and `finetune significance DIR` on hand-written plans."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from finetune.analysis.comparison import compare_conditions, comparison_text, parse_condition
from finetune.analysis.results import collect
from finetune.analysis.significance import Stratum, statistic, stratified_test
from finetune.cli import main
from finetune.errors import UsageError
from finetune.layout import logits_name


def test_the_statistic_of_per_example_scores():
    values = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    assert statistic(values, np.ones(3), "f1") == pytest.approx([0.5, 1 / 3])
    loss_sum, tokens = np.array([10.0, 30.0]), np.array([5.0, 15.0])
    assert statistic(loss_sum, tokens, "loss") == pytest.approx([2.0])  # token-weighted, not a mean of means
    assert statistic(loss_sum, tokens, "perplexity") == pytest.approx([math.exp(2.0)])


def test_identical_qa_systems_give_p_one():
    rng = np.random.default_rng(0)
    strata = []
    for _ in range(3):
        f1 = rng.random(300)
        strata.append(Stratum(f1, f1, np.ones(300), "squad"))
    r = stratified_test(strata, metric="f1", rounds=300)
    assert r.p_value == 1.0 and r.difference == 0.0 and (r.ci_low, r.ci_high) == (0.0, 0.0)
    assert not r.lower_is_better


def _qa_gain(seeds: int, n: int, rng) -> list[Stratum]:
    """Exact match: A right 52% of the time, B 50%, independently, on the same questions each seed."""
    return [Stratum((rng.random(n) < 0.52).astype(float), (rng.random(n) < 0.50).astype(float), np.ones(n), "q")
            for _ in range(seeds)]


def test_a_consistent_small_qa_gain_pooled_over_seeds_gives_a_small_p():
    strata = _qa_gain(10, 3000, np.random.default_rng(4))
    per_seed = [stratified_test([s], metric="exact_match", rounds=200, seed=i).p_value for i, s in enumerate(strata)]
    assert sorted(per_seed)[len(per_seed) // 2] > 0.05  # most seeds alone show nothing
    r = stratified_test(strata, metric="exact_match", rounds=1000, seed=1)
    assert r.p_value < 0.005 and 0.0 < r.ci_low < r.difference < r.ci_high and r.ci_low < 0.02 < r.ci_high


def _lm_strata(seeds: int, blocks: int, rng, gain: float) -> list[Stratum]:
    """Per block: summed token loss and the token count; A's mean loss is lower by ``gain``."""
    out = []
    tokens = rng.integers(20, 64, size=blocks).astype(float)
    for _ in range(seeds):
        base = rng.normal(3.0, 0.5, size=blocks)
        noise_a, noise_b = rng.normal(0, 0.3, size=(2, blocks))
        out.append(Stratum((base - gain + noise_a) * tokens, (base + noise_b) * tokens, tokens, "wiki"))
    return out


def test_lower_loss_and_perplexity_are_tested_token_weighted():
    strata = _lm_strata(3, 400, np.random.default_rng(7), gain=0.08)
    loss = stratified_test(strata, metric="loss", rounds=1000)
    assert loss.lower_is_better and loss.difference < 0 and loss.p_value < 0.005 and loss.ci_high < 0
    ppl = stratified_test(strata, metric="perplexity", rounds=1000)
    assert ppl.lower_is_better and ppl.difference < 0 and ppl.p_value < 0.005
    assert ppl.score_a == pytest.approx(np.mean([math.exp(s.preds_a.sum() / s.labels.sum()) for s in strata]))
    same = stratified_test(_lm_strata(3, 400, np.random.default_rng(8), gain=0.0), metric="loss", rounds=1000)
    assert same.p_value > 0.05


# --- conditions of a plan ---------------------------------------------------------------------------------


def task_plan(plan_dir: Path, kind: str) -> Path:
    """normal vs ipa, train czech, eval czech and slovak, 3 seeds; IPA better on czech -> slovak only.
    kind "qa": exact_match and f1 per question (training.metric f1); "lm": loss_sum and tokens per
    block (training.metric loss)."""
    rng = np.random.default_rng(3)
    n = 500
    metric = "f1" if kind == "qa" else "loss"
    plan = {"version": 1, "sources": [], "trials": [],
            "groups": {"g": {"config": {"training": {"metric": metric, "selection": "train-languages"}}}}}
    tokens = {lang: rng.integers(20, 64, size=n).astype(float) for lang in ("czech", "slovak")}
    for seed in (1, 2, 3):
        base = {lang: rng.random(n) for lang in ("czech", "slovak")}
        for mt in ("normal", "ipa"):
            tid = f"{mt[0]}c{seed}{'0' * 9}"
            plan["trials"].append({"id": tid, "model_type": mt, "train_languages": ["czech"],
                                   "eval_languages": ["czech", "slovak"],
                                   "hyperparameters": {"learning_rate": 1e-4, "seed": seed}, "group": "g"})
            tdir = plan_dir / "trials" / tid
            (tdir / "logits").mkdir(parents=True)
            metrics = {}
            for lang in ("czech", "slovak"):
                better = mt == "ipa" and lang == "slovak"
                if kind == "qa":
                    f1 = np.clip(base[lang] + (0.06 if better else 0.0) + rng.normal(0, 0.05, n) * better, 0, 1)
                    em = (f1 > 0.5).astype(float)
                    arrays = {"f1": f1, "exact_match": em, "prediction": np.array(["x"] * n)}
                    scores = {"f1": float(f1.mean()), "exact_match": float(em.mean()), "loss": 1.0}
                else:
                    loss = 3.0 + base[lang] - (0.1 if better else 0.0) + rng.normal(0, 0.05, n) * better
                    arrays = {"loss_sum": loss * tokens[lang], "tokens": tokens[lang]}
                    mean = float(arrays["loss_sum"].sum() / tokens[lang].sum())
                    scores = {"loss": mean, "perplexity": math.exp(mean)}
                np.savez(tdir / "logits" / logits_name(tid, lang, "test"), **arrays)
                metrics[lang] = {"eval": scores, "test": scores}
            (tdir / "result.json").write_text(json.dumps({"state": "finished", "trial": tid, "metrics": metrics}))
    (plan_dir / "plan.json").write_text(json.dumps(plan))
    return plan_dir


@pytest.mark.parametrize("kind,metric", [("qa", "f1"), ("qa", "exact_match"), ("lm", "loss"), ("lm", "perplexity")])
def test_ipa_vs_normal_on_a_qa_or_lm_plan(tmp_path, kind, metric):
    table = collect(task_plan(tmp_path, kind), metric=metric)
    cmp = compare_conditions(table, parse_condition("model_type=ipa", "--a"), parse_condition("model_type=normal", "--b"),
                             rounds=1000)
    assert [c.label for c in cmp.cells] == ["train czech, eval czech", "train czech, eval slovak"]
    same, gain = cmp.cell(language="czech"), cmp.cell(language="slovak")
    assert same.result.p_value == 1.0 and same.result.difference == 0.0
    assert gain.seeds == [1, 2, 3] and gain.result.p_value < 0.01 and gain.p_holm < 0.02
    lower = metric in ("loss", "perplexity")
    assert gain.result.lower_is_better == lower and (gain.result.difference < 0) == lower  # IPA is better
    assert cmp.pooled["all cells"].strata == 6
    text = comparison_text(cmp)
    assert f"test {metric}" in text and (("Lower " + metric + " is better") in text) == lower


def test_cli_significance_takes_the_plans_metric_and_says_what_is_missing(tmp_path, capsys):
    plan = task_plan(tmp_path / "qa", "qa")
    assert main(["significance", str(plan), "--rounds", "300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "f1" and out["cells"][1]["p_value"] < 0.01  # the plan's training.metric
    lm = task_plan(tmp_path / "lm", "lm")
    assert main(["significance", str(lm), "--metric", "perplexity", "--rounds", "300"]) == 0
    assert "Lower perplexity is better" in capsys.readouterr().out
    # a dump without the metric's per-example scores: the file and what it has
    dump = next((plan / "trials").glob("ic1*/logits/*-slovak-test.npz"))
    np.savez(dump, exact_match=np.zeros(500))
    assert main(["significance", str(plan), "--rounds", "10"]) == 2
    err = capsys.readouterr().err
    assert f"{dump}: f1: no per-example 'f1' in this dump (has: exact_match)" in err
    with pytest.raises(UsageError, match="predictions"):
        for f in (lm / "trials").glob("*/logits/*.npz"):
            f.unlink()
        compare_conditions(collect(lm, metric="loss"), parse_condition("model_type=ipa", "--a"),
                           parse_condition("model_type=normal", "--b"), rounds=10)
