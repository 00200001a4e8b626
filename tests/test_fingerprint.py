"""Trial ids cover the content of the files a trial reads: pretraining again plans new trials,
and the old ones are marked superseded (submit skips them, collect shows them apart)."""

from __future__ import annotations

import json
import os

import pytest
from test_plan import confdir, files  # noqa: F401

from finetune.analysis.results import collect
from finetune.login.fingerprint import MISSING, Fingerprints
from finetune.login.plan import build_plan, load_plan, write_plan
from finetune.login.submit import submit


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_FINGERPRINT_CACHE", str(tmp_path / "cache" / "fingerprints.json"))


def pretrain(models, name: str, tok: str, payload: bytes) -> None:
    """Stand-ins for `finetune pretrain`'s outputs: the bytes are what the ids must follow."""
    (models / name).mkdir(parents=True, exist_ok=True)
    (models / name / "ckpt.pt").write_bytes(payload)
    (models / f"{tok}-vocab.json").write_text('{"a": 0}')
    (models / f"{tok}-merges.txt").write_text("#version: 0.2\n")


def test_pretraining_again_plans_new_trials_and_supersedes_the_old(confdir, tmp_path):  # noqa: F811
    models = confdir.parent / "models"
    pretrain(models, "n-ckpt", "n-tok", b"weights v1")
    pretrain(models, "i-ckpt", "i-tok", b"ipa weights v1")
    layers = files(confdir, "pair.json", "task.json")
    first = build_plan(layers)
    out = tmp_path / "run"
    write_plan(first, out)
    assert first.groups[first.trials[0].group]["inputs"]["checkpoints"]["normal"] != MISSING
    assert [t.id for t in build_plan(layers).trials] == [t.id for t in first.trials]  # nothing changed: same ids

    (models / "n-ckpt" / "ckpt.pt").write_bytes(b"weights v2 (pretrained again, same name)")
    second = build_plan(layers)
    old = {t.model_type: t for t in first.trials}
    new = {t.model_type: t for t in second.trials}
    assert new["normal"].id != old["normal"].id and new["normal"].lineage == old["normal"].lineage
    assert new["ipa"].id == old["ipa"].id  # its files did not change

    # the old normal trial had finished: a replan must not call the new one finished too
    tdir = out / "trials" / old["normal"].id
    tdir.mkdir(parents=True)
    (tdir / "result.json").write_text(json.dumps({"state": "finished", "metrics": {}}))
    report = write_plan(second, out)
    assert report.added == [new["normal"].id] and report.superseded == [old["normal"].id]
    records = {t.id: t for t in load_plan(out).trials}
    assert records[old["normal"].id].superseded_by == new["normal"].id
    assert records[new["normal"].id].superseded_by is None

    rows = {r.trial_id: r for r in collect(out).rows}
    assert rows[old["normal"].id].state == "superseded"
    assert f"by {new['normal'].id}" in rows[old["normal"].id].reason and "was finished" in rows[old["normal"].id].reason
    sub = submit(out, executor="local", dry_run=True)
    assert sub.superseded == [old["normal"].id]
    assert sorted(t for j in sub.arrays for t in j.trial_ids) == sorted([new["normal"].id, new["ipa"].id])
    assert "1 superseded" in sub.summary()

    # the old checkpoint back: the old trial is current again and the other one superseded
    (models / "n-ckpt" / "ckpt.pt").write_bytes(b"weights v1")
    again = write_plan(build_plan(layers), out)
    records = {t.id: t for t in load_plan(out).trials}
    assert again.superseded == [new["normal"].id] and records[old["normal"].id].superseded_by is None


def test_local_dataset_content_is_part_of_the_id_hub_mirrors_are_not(confdir, tmp_path):  # noqa: F811
    data = tmp_path / "mine"
    for lang in ("rus_Cyrl", "pol_Latn"):
        (data / lang).mkdir(parents=True)
        (data / lang / "train.tsv").write_text("text\tcategory\nx\ty\n")
    db = json.loads((confdir / "language-database.json").read_text())
    for lang in ("russian", "polish"):
        db[lang]["topic"]["mine"] = {**db[lang]["topic"]["sib200"], "dataset": str(data)}
    (confdir / "language-database.json").write_text(json.dumps(db))
    (confdir / "local.json").write_text('{"datasets": {"russian": "mine", "polish": "mine"}}')
    layers = files(confdir, "pair.json", "task.json", "local.json")
    before = build_plan(layers)
    (data / "rus_Cyrl" / "train.tsv").write_text("text\tcategory\nx\tz\n")
    after = build_plan(layers)
    assert before.trials[0].id != after.trials[0].id and before.trials[0].lineage == after.trials[0].lineage
    # a mirror of the hub dataset is the hub's data: its folder is not fingerprinted
    mirror = build_plan(files(confdir, "pair.json", "task.json"), [f"data.mirrors.Davlan/sib200={data}"])
    hub = build_plan(files(confdir, "pair.json", "task.json"))
    assert [t.id for t in mirror.trials] == [t.id for t in hub.trials]


def test_the_cache_is_keyed_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "ckpt.pt"
    f.write_bytes(b"aaaa")
    fp = Fingerprints(tmp_path / "fp.json")
    first = fp.file(f)
    fp.save()
    entry = json.loads((tmp_path / "fp.json").read_text())[str(f)]
    assert entry[0] == 4 and entry[2] == first
    st = os.stat(f)
    f.write_bytes(b"bbbb")  # same size; put the old mtime back: the cache cannot tell
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Fingerprints(tmp_path / "fp.json").file(f) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a rewrite moves the mtime: hashed again
    assert Fingerprints(tmp_path / "fp.json").file(f) != first
    assert fp.file(tmp_path / "absent") == MISSING


def test_plan_replace_drops_never_run_and_failed_trials_only(confdir, tmp_path, capsys):  # noqa: F811
    from finetune.cli import main
    from finetune.layout import trial_dir

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": [1e-4, 2e-4, 3e-4, 4e-4]}}))
    out = tmp_path / "run"
    layers = files(confdir, "pair.json", "task.json")
    assert main(["plan", *layers, "--grid-config", str(grid), "--model-type", "normal", "-o", str(out),
                 "--no-submit"]) == 0
    ids = [t.id for t in load_plan(out).trials]
    (trial_dir(out, ids[0]) / "result.json").parent.mkdir(parents=True)
    (trial_dir(out, ids[0]) / "result.json").write_text('{"state": "finished", "metrics": {}}')
    trial_dir(out, ids[1]).mkdir(parents=True)
    (trial_dir(out, ids[1]) / "state.json").write_text('{"state": "failed", "reason": "typo"}')
    trial_dir(out, ids[2]).mkdir(parents=True)
    (trial_dir(out, ids[2]) / "state.json").write_text('{"state": "running"}')
    # ids[3] never ran. The fixed grid produces none of them.
    grid.write_text(json.dumps({"parameters": {"learning_rate": [5e-4]}}))
    argv = ["plan", *layers, "--grid-config", str(grid), "--model-type", "normal", "-o", str(out), "--no-submit"]
    assert main(argv) == 0
    assert len(load_plan(out).trials) == 5  # without --replace plan.json only grows
    capsys.readouterr()
    assert main([*argv, "--replace"]) == 0
    assert "--replace: dropped 2 trials" in capsys.readouterr().out
    left = [t.id for t in load_plan(out).trials]
    assert left[:2] == [ids[0], ids[2]] and ids[1] not in left and ids[3] not in left and len(left) == 3
    assert (trial_dir(out, ids[1]) / "state.json").is_file()  # its folder (and log) stays
