"""Byte-level BPE tokenizers, from whatever the config points at.

* ``<prefix>`` with ``<prefix>-vocab.json`` and ``<prefix>-merges.txt`` beside it: GPT-2 style
  byte-level BPE (the files nanoGPT users train), loaded with ``add_prefix_space`` so the first
  word is split like every other word;
* a ``tokenizer.json`` file (the ``tokenizers`` library's format);
* a Hugging Face directory (``tokenizer.json`` / ``tokenizer_config.json`` inside).

Every tokenizer comes back as a ``transformers`` fast tokenizer with pad = eos and right padding,
which is what the GPT's last-token pooling expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.errors import FinetuneError, Problem
from finetune.login.inputs import tokenizer_files, tokenizer_kind, tokenizer_problems  # noqa: F401 (API)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]")


class TokenizerError(FinetuneError):
    """The tokenizer files are missing or unreadable."""


def _pick_eos(vocab: dict[str, int], eos_token: str | None, file: str) -> str:
    if eos_token is not None:
        if eos_token not in vocab:
            raise TokenizerError(problems=[Problem(file, "", f"eos token {eos_token!r} is not in the vocabulary")])
        return eos_token
    for tok in EOS_CANDIDATES:
        if tok in vocab:
            return tok
    raise TokenizerError(
        problems=[
            Problem(file, "", f"no end-of-text token in the vocabulary (looked for {', '.join(EOS_CANDIDATES)})")
        ]
    )


def _from_vocab_merges(prefix: str, eos_token: str | None) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    problems = tokenizer_problems(prefix)
    if problems:
        raise TokenizerError(problems=problems)
    vocab_file, merges_file = tokenizer_files(prefix)
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        bpe = BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as e:  # tokenizers raises plain Exception subclasses with a message
        raise TokenizerError(problems=[Problem(str(vocab_file), "", f"cannot read vocab/merges: {e}")]) from None
    if not isinstance(vocab, dict):
        raise TokenizerError(problems=[Problem(str(vocab_file), "$", "expected a JSON object token -> id")])
    eos = _pick_eos(vocab, eos_token, str(vocab_file))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([eos])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos)


def _from_json(file: Path, eos_token: str | None) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    try:
        tok = PreTrainedTokenizerFast(tokenizer_file=str(file))
    except Exception as e:
        raise TokenizerError(problems=[Problem(str(file), "", f"not a tokenizers tokenizer.json: {e}")]) from None
    eos = _pick_eos(tok.get_vocab(), eos_token, str(file))
    tok.add_special_tokens({"eos_token": eos, "bos_token": eos})
    return tok


def _from_dir(path: Path, eos_token: str | None) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    problems = tokenizer_problems(path)
    if problems:
        raise TokenizerError(problems=problems)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise TokenizerError(problems=[Problem(str(path), "", f"cannot load tokenizer directory: {e}")]) from None
    if eos_token is not None or tok.eos_token is None:
        eos = _pick_eos(tok.get_vocab(), eos_token, str(path))
        tok.add_special_tokens({"eos_token": eos})
    return tok


def load_tokenizer(path_or_prefix: str | os.PathLike[str], *, eos_token: str | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer at ``path_or_prefix`` (vocab/merges prefix, tokenizer.json or HF dir).

    pad = eos, right padding. ``eos_token`` overrides the end-of-text token, which is otherwise
    the first of ``EOS_CANDIDATES`` in the vocabulary.
    """
    kind = tokenizer_kind(path_or_prefix)
    if kind == "dir":
        tok = _from_dir(Path(path_or_prefix), eos_token)
    elif kind == "json":
        tok = _from_json(Path(path_or_prefix), eos_token)
    else:
        tok = _from_vocab_merges(str(path_or_prefix), eos_token)
    tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok
