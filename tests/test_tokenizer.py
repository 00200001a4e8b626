"""finetune.compute.tokenizer: byte-level BPE from vocab/merges, tokenizer.json or an HF directory."""

from __future__ import annotations

import json

import pytest
from nanogpt_fixtures import sib200_texts, tiny_pretrained  # noqa: F401

from finetune.compute.tokenizer import TokenizerError, load_tokenizer, tokenizer_kind, tokenizer_problems


@pytest.fixture(scope="module")
def texts():
    return sib200_texts(("rus_Cyrl", "pol_Latn"), per_language=20)


def test_vocab_merges_prefix_matches_the_tokenizers_library(tiny_pretrained, texts):  # noqa: F811
    from tokenizers import ByteLevelBPETokenizer

    _, prefix = tiny_pretrained
    reference = ByteLevelBPETokenizer(f"{prefix}-vocab.json", f"{prefix}-merges.txt", add_prefix_space=True)
    tok = load_tokenizer(prefix)
    assert [tok(t)["input_ids"] for t in texts] == [e.ids for e in reference.encode_batch(texts)]
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id == reference.token_to_id("<|endoftext|>")
    assert tok.padding_side == "right"
    # GPT-2 file formats: merges start with the version header, vocab is token -> id
    assert (prefix.parent / f"{prefix.name}-merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2")
    assert isinstance(json.loads((prefix.parent / f"{prefix.name}-vocab.json").read_text())["<|endoftext|>"], int)


def test_prefix_space_and_right_padding(tiny_pretrained, texts):  # noqa: F811
    tok = load_tokenizer(tiny_pretrained[1])
    # the first word is split like any other word
    assert tok("Россия")["input_ids"] == tok(" Россия")["input_ids"]
    batch = tok(texts[:3], padding=True, return_tensors="pt")
    lengths = [len(tok(t)["input_ids"]) for t in texts[:3]]
    for row, mask, n in zip(batch["input_ids"], batch["attention_mask"], lengths, strict=True):
        assert mask.tolist() == [1] * n + [0] * (len(mask) - n)
        assert set(row[n:].tolist()) <= {tok.pad_token_id}
    assert tok.decode(tok(texts[0])["input_ids"]).strip() == texts[0]


def test_tokenizer_json_and_hf_directory_give_the_same_ids(tiny_pretrained, texts, tmp_path):  # noqa: F811
    tok = load_tokenizer(tiny_pretrained[1])
    tok.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    tok.save_pretrained(tmp_path / "hf")
    expected = [tok(t)["input_ids"] for t in texts]
    for path in (tmp_path / "tokenizer.json", tmp_path / "hf"):
        other = load_tokenizer(path)
        assert [other(t)["input_ids"] for t in texts] == expected, path
        assert other.pad_token == other.eos_token == "<|endoftext|>" and other.padding_side == "right"


def test_kind_prefers_vocab_files_over_the_checkpoint_directory_of_the_same_name(tiny_pretrained, tmp_path):  # noqa: F811
    ckpt, prefix = tiny_pretrained
    assert ckpt.parent == prefix and prefix.is_dir()  # nanoGPT layout: models/NAME/ckpt.pt + models/NAME-vocab.json
    assert tokenizer_kind(prefix) == "prefix"
    (tmp_path / "d").mkdir()
    (tmp_path / "t.json").write_text("{}")
    assert tokenizer_kind(tmp_path / "d") == "dir" and tokenizer_kind(tmp_path / "t.json") == "json"
    assert tokenizer_kind(tmp_path / "absent") == "prefix"


def test_missing_files_are_named(tmp_path):
    (tmp_path / "m-vocab.json").write_text('{"a": 0}')
    assert [p.message for p in tokenizer_problems(tmp_path / "m")] == [f"{tmp_path}/m-merges.txt: tokenizer file not found"]
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(tmp_path / "absent")
    assert sorted(p.message for p in err.value.problems) == [
        f"{tmp_path}/absent-merges.txt: tokenizer file not found",
        f"{tmp_path}/absent-vocab.json: tokenizer file not found",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_a_hand_written_gpt2_vocab_without_eot_needs_an_eos(tmp_path):
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["Ġa"] = len(vocab)
    vocab["</s>"] = len(vocab)
    (tmp_path / "g-vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "g-merges.txt").write_text("#version: 0.2\nĠ a\n")
    tok = load_tokenizer(tmp_path / "g")
    assert tok.eos_token == "</s>" and tok.pad_token_id == vocab["</s>"]
    assert tok("a a")["input_ids"] == [vocab["Ġa"], vocab["Ġa"]]
    with pytest.raises(TokenizerError, match="'<eot>' is not in the vocabulary"):
        load_tokenizer(tmp_path / "g", eos_token="<eot>")
    del vocab["</s>"]
    (tmp_path / "g-vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(TokenizerError, match="no end-of-text token"):
        load_tokenizer(tmp_path / "g")
    assert load_tokenizer(tmp_path / "g", eos_token="Ġa").pad_token == "Ġa"
