"""The demo pipeline end to end at the tiny size: pretrain, plan, run, collect, plot; then a rerun.

Real parts throughout: SIB-200 from data/sib200 (in the repository), espeak-ng for the IPA corpus, the
local executor running `finetune train TRIAL_DIR`, and (marked slurm) the real SLURM test cluster.
"""

from __future__ import annotations

import csv

import pytest

from finetune.cli import main

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _check_outputs(out):
    rows = list(csv.DictReader((out / "results.csv").open()))
    # 3 train sets (polish, russian, polish+russian) x 2 model types, one grid point
    assert sorted((r["model_type"], r["train_set"]) for r in rows) == sorted(
        (mt, ts) for mt in ("normal", "ipa") for ts in ("polish", "russian", "polish+russian")
    )
    assert {r["state"] for r in rows} == {"finished"}, [(r["trial"], r["state"], r["reason"]) for r in rows]
    for r in rows:
        for lang in ("polish", "russian"):
            for split in ("eval", "test"):
                assert 0.0 <= float(r[f"{lang}/{split}/macro_f1"]) <= 1.0
    md = (out / "results.md").read_text()
    assert md.count("| normal |") + md.count("| ipa |") >= 12  # 6 cells per model type in the best table
    heat = out / "plots" / "transfer-heatmap.png"
    assert heat.stat().st_size > 10_000
    for name in ("rus-pol-normal", "rus-pol-ipa"):
        assert (out / "models" / name / "ckpt.pt").is_file()
        assert (out / "models" / f"{name}-vocab.json").is_file()
    return rows


def test_demo_tiny_local_and_rerun(tmp_path, capsys, sib200_dir):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--executor", "local", "--parallel", "2"]) == 0
    log = capsys.readouterr().out
    for stage in ("[1/4 plan]", "[2/4 models]", "[3/4 run]", "[4/4 collect]", "[done]"):
        assert stage in log
    assert "pretraining rus-pol-ipa" in log and "6/6 trials done" in log
    _check_outputs(out)
    # the IPA tokenizer was trained on IPA, the normal one on text: each encodes its own script shorter
    from finetune.compute.ipa import transcribe
    from finetune.compute.tokenizer import load_tokenizer

    ipa_tok = load_tokenizer(out / "models" / "rus-pol-ipa")
    normal_tok = load_tokenizer(out / "models" / "rus-pol-normal")
    text = (sib200_dir / "rus_Cyrl" / "train.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")[2]
    ipa = transcribe([text], "ru")[0]
    assert len(ipa_tok(ipa)["input_ids"]) < len(normal_tok(ipa)["input_ids"])
    assert len(normal_tok(text)["input_ids"]) < len(ipa_tok(text)["input_ids"])

    # rerun: models reused, no trial trained again, same table
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/result.json")}
    ckpt_stamp = (out / "models" / "rus-pol-normal" / "ckpt.pt").stat().st_mtime_ns
    before = (out / "results.csv").read_text()
    assert main(["demo", "--size", "tiny", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "reusing" in log and "all 6 trials already finished" in log and "pretraining" not in log
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/result.json")} == stamps
    assert (out / "models" / "rus-pol-normal" / "ckpt.pt").stat().st_mtime_ns == ckpt_stamp
    assert (out / "results.csv").read_text() == before


def test_demo_bad_flag_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--size", "huge"])
    assert e.value.code == 2
    assert "--size" in capsys.readouterr().err


def test_demo_bad_set_exit_2_nothing_written(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--set", "hyperparameters.learnin_rate=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "learnin_rate" in err and "learning_rate" in err  # names the key and suggests the fix
    assert not out.exists()


def test_demo_without_its_data_says_where_they_belong(tmp_path, monkeypatch, capsys):
    import finetune.demo

    monkeypatch.setattr(finetune.demo, "DATA", "data/absent")
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data/absent: the demo data are missing" in err and "Traceback" not in err
    assert not out.exists()


def test_demo_slurm_without_cluster_fails_before_work(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "slurm.conf"
    empty.write_text("")
    monkeypatch.setenv("SLURM_CONF", str(empty))  # sinfo cannot reach any controller
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--executor", "slurm"]) == 2
    assert "--executor: slurm: sinfo failed" in capsys.readouterr().err
    assert not out.exists()  # nothing planned or pretrained


def test_demo_and_collect_help_have_examples(capsys):
    for cmd in ("demo", "collect"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert f"examples:\n  finetune {cmd}" in capsys.readouterr().out


@pytest.mark.slurm
def test_demo_tiny_on_slurm(slurm_cluster, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--executor", "slurm", "--timeout", "600"]) == 0
    log = capsys.readouterr().out
    assert "submitting to the slurm executor" in log and "6/6 trials done (6 finished)" in log
    _check_outputs(out)
    manifest = (out / "manifest.json").read_text()
    assert '"executor": "slurm"' in manifest
    # every trial ran inside a SLURM array task
    for log_file in out.glob("trials/*/log.txt"):
        assert " job " in log_file.read_text()
