"""finetune.compute.pretrain and `finetune pretrain`: outputs in nanoGPT's exact layouts, reruns, flags."""

from __future__ import annotations

import math

import pytest
import torch
from nanogpt_fixtures import TINY, sib200_texts, tiny_pretrained  # noqa: F401

from finetune.cli import main
from finetune.compute.model import MODEL_ARGS, load_checkpoint, load_gpt
from finetune.compute.pretrain import pretrain
from finetune.compute.tokenizer import load_tokenizer
from finetune.errors import UsageError


def test_writes_a_checkpoint_in_nanogpts_format(tiny_pretrained):  # noqa: F811
    ckpt_path, prefix = tiny_pretrained
    assert ckpt_path == prefix / "ckpt.pt"
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # plain types only
    assert set(raw) == {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"}
    assert set(raw["model_args"]) == set(MODEL_ARGS)
    assert raw["iter_num"] == TINY["steps"] and isinstance(raw["config"], dict)
    assert raw["model_args"]["n_layer"] == TINY["n_layer"] and raw["model_args"]["block_size"] == TINY["block_size"]
    assert "transformer.h.0.attn.c_attn.weight" in raw["model"] and "lm_head.weight" in raw["model"]
    config, _, meta = load_checkpoint(ckpt_path)
    assert math.isfinite(meta["best_val_loss"])
    tok = load_tokenizer(prefix)
    assert config.vocab_size == len(tok) <= TINY["vocab_size"]


def test_the_model_learned_something(tiny_pretrained):  # noqa: F811
    ckpt_path, prefix = tiny_pretrained
    model, tok = load_gpt(ckpt_path), load_tokenizer(prefix)
    ids = tok(" ".join(sib200_texts(("rus_Cyrl",), per_language=3)))["input_ids"][:64]
    x = torch.tensor([ids])
    _, loss = model(x[:, :-1], x[:, 1:])
    assert loss.item() < math.log(len(tok)) - 0.5  # better than uniform over the vocabulary


def test_is_deterministic_and_reruns_never_destroy_finished_work(tmp_path):
    texts = sib200_texts(("pol_Latn",), per_language=60)
    small = dict(TINY, steps=3, vocab_size=300)
    a = pretrain(texts, tmp_path / "a", "m", **small)
    b = pretrain(texts, tmp_path / "b", "m", **small)
    sa, sb = load_checkpoint(a.ckpt_path)[1], load_checkpoint(b.ckpt_path)[1]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (tmp_path / "a" / "m-vocab.json").read_bytes() == (tmp_path / "b" / "m-vocab.json").read_bytes()

    before = a.ckpt_path.read_bytes()
    with pytest.raises(UsageError, match="exists"):
        pretrain(texts, tmp_path / "a", "m", **small)
    skipped = pretrain(texts, tmp_path / "a", "m", if_exists="skip", **small)
    assert skipped.skipped and a.ckpt_path.read_bytes() == before
    again = pretrain(texts, tmp_path / "a", "m", if_exists="overwrite", **dict(small, seed=1))
    assert not again.skipped and a.ckpt_path.read_bytes() != before


def test_a_corpus_shorter_than_a_block_still_trains(tmp_path):
    result = pretrain(["один два три", "раз два"], tmp_path, "short", vocab_size=300, n_layer=1, n_head=1,
                      n_embd=8, block_size=64, steps=2, batch_size=2)
    assert load_checkpoint(result.ckpt_path)[0].block_size == 64


def test_bad_arguments_are_all_reported(tmp_path):
    with pytest.raises(UsageError) as err:
        pretrain(["  ", ""], tmp_path, "../x", n_embd=30, n_head=4, steps=0)
    assert {p.file for p in err.value.problems} == {"--name", "--n-embd", "--steps", "corpus"}
    assert not any(tmp_path.iterdir())


def test_cli_pretrains_from_sib200_and_from_corpus_files(sib200_dir, tmp_path, capsys):
    args = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32", "--steps", "2",
            "--vocab-size", "300", "--batch-size", "4"]
    rc = main(["pretrain", "--sib200", str(sib200_dir), "--languages", "rus_Cyrl", "pol_Latn", "--limit", "30",
               "--name", "rp", "--out-dir", str(tmp_path), *args])
    assert rc == 0
    assert (tmp_path / "rp" / "ckpt.pt").is_file() and (tmp_path / "rp-merges.txt").is_file()
    assert load_checkpoint(tmp_path / "rp" / "ckpt.pt")[2]["config"]["corpus_texts"] == 60

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sib200_texts(("ces_Latn",), per_language=40)) + "\n\n", encoding="utf-8")
    assert main(["pretrain", "--corpus", str(corpus), "--name", "cs", "--out-dir", str(tmp_path), *args]) == 0
    assert load_checkpoint(tmp_path / "cs" / "ckpt.pt")[2]["config"]["corpus_texts"] == 40
    # a rerun without --force refuses and leaves the model alone; --skip-existing is a no-op
    before = (tmp_path / "cs" / "ckpt.pt").read_bytes()
    capsys.readouterr()
    assert main(["pretrain", "--corpus", str(corpus), "--name", "cs", "--out-dir", str(tmp_path), *args]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["pretrain", "--corpus", str(corpus), "--name", "cs", "--out-dir", str(tmp_path),
                 "--skip-existing", *args]) == 0
    assert (tmp_path / "cs" / "ckpt.pt").read_bytes() == before


def test_cli_ipa_transcribes_the_corpus(sib200_dir, tmp_path):
    pytest.importorskip("finetune.compute.ipa")
    rc = main(["pretrain", "--sib200", str(sib200_dir), "--languages", "rus_Cyrl", "pol_Latn=pl", "--limit", "15",
               "--ipa", "--name", "ipa", "--out-dir", str(tmp_path), "--n-layer", "1", "--n-head", "2",
               "--n-embd", "16", "--block-size", "32", "--steps", "1", "--vocab-size", "300"])
    assert rc == 0
    tok = load_tokenizer(tmp_path / "ipa")
    assert any("ʲ" in tok.decode([i]) for i in range(len(tok)))  # IPA palatalisation became tokens
    from finetune.compute.ipa import transcribe

    ipa = transcribe(["Москва"], "ru")[0]
    assert tok.decode(tok(ipa)["input_ids"]).strip() == ipa
    assert len(tok(ipa)["input_ids"]) < len(ipa.encode("utf-8"))  # merges were learned from IPA text


@pytest.mark.parametrize(
    "argv, where",
    [
        (["--sib200", "{sib}", "--name", "x"], "--languages"),
        (["--sib200", "{sib}", "--languages", "xxx_Latn", "--name", "x"], "--sib200"),
        (["--sib200", "{sib}", "--languages", "xxx_Latn", "--ipa", "--name", "x"], "--languages"),
        (["--corpus", "{tmp}/absent.txt", "--name", "x"], "absent.txt"),
        (["--corpus", "{tmp}/absent.txt", "--ipa", "--name", "x"], "--espeak"),
        (["--corpus", "{tmp}/absent.txt", "--languages", "rus_Cyrl", "--name", "x"], "--languages"),
    ],
)
def test_cli_flag_errors_exit_2_and_write_nothing(sib200_dir, tmp_path, capsys, argv, where):
    out = tmp_path / "out"
    argv = [a.format(sib=sib200_dir, tmp=tmp_path) for a in argv]
    assert main(["pretrain", *argv, "--out-dir", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and where in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.55), (100, 0.1), (150, 0.1)],
)
def test_learning_rate_warms_up_then_decays_to_a_tenth(step, expected):
    from finetune.compute.pretrain import learning_rate_at

    assert learning_rate_at(step, 1.0, warmup=10, steps=100) == pytest.approx(expected)


def test_threads_are_restored(tmp_path):
    before = torch.get_num_threads()
    pretrain(["раз два три"] * 5, tmp_path, "t", vocab_size=300, n_layer=1, n_head=1, n_embd=8,
             block_size=8, steps=1, batch_size=2, threads=1)
    assert torch.get_num_threads() == before
