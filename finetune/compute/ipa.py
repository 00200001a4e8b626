"""IPA transcription with phonemizer's espeak-ng binding on the library of ``espeakng-loader``.

No system espeak package is needed: the shared library and its data folder come from the
PyPI wheel ``espeakng-loader``. Output is plain IPA, no stress marks, words separated by single
spaces, punctuation kept where it was.

The Russian glitch: espeak-ng 1.51/1.52 has two Russian phonemes without an ``ipa`` rendering
(``phsource/ph_russian``), so their mnemonics leak into the IPA output as raw ASCII:

* ``u"`` is the fronted [u] of stressed ``ю`` after a soft consonant (formants ``vwl_ru/u#u``,
  between [u] and [ʉ]): IPA ``ʉ``. Example: люблю -> ``ɭʲu"bɭʲu"`` becomes ``ɭʲʉbɭʲʉ``.
* ``I^`` is the "silent i" that only palatalises the consonant before it (``рь`` at a word's
  end, ``unstressed nonsyllabic``): IPA ``ʲ``. Example: теперь -> ``tʲipʲerɪ^`` becomes ``tʲipʲerʲ``.

The fix is applied to espeak's output for word chunks, which never hold punctuation (it is split
off first and put back afterwards), so a real quotation mark after a ``u`` is never touched.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from finetune.errors import FinetuneError, Problem

# Bump when the output for the same input changes (cached transcriptions are keyed by it).
FIX_REVISION = 2

# Punctuation kept in the output: phonemizer's defaults plus the quotes and dashes of the
# Slavic languages in the database.
PUNCTUATION = ';:,.!?¡¿—…"«»“”(){}[]„‹›–'

# Raw espeak mnemonics (mnemonic -> IPA); longest first. Keys are as they appear after
# espeak's ASCII -> IPA letter mapping (``I`` is already ``ɪ``).
_LEAKED = (
    ("ʲɪ^", "ʲ"),  # a consonant that is already palatalised needs no second mark
    ("ɪ^", "ʲ"),
    ("u\"", "ʉ"),
)
_LEAKED_RE = re.compile("|".join(re.escape(k) for k, _ in _LEAKED))
_LEAKED_MAP = dict(_LEAKED)
# ASCII that espeak never emits in IPA mode except as part of a leaked mnemonic (a leaked ``"``
# can only be told from a real quotation mark by counting them against the input).
RAW_SYMBOLS_RE = re.compile(r"[\\^#@%&=<>|_0-9A-Z]")

# "(en)" ... "(ru)": espeak switched voice for a foreign word; the flags are not IPA
_FLAGS_RE = re.compile(r"\(.+?\)")
# stress marks (as phonemizer's with_stress=False) and espeak's "_" between phonemes
_DROP_RE = re.compile(r"[ˈˌ'\-_]+")
_PUNCT_RE = re.compile(r"(\s*[" + re.escape(PUNCTUATION) + r"]+\s*)")
_SPACES_RE = re.compile(r"\s+")

_lock = threading.Lock()
_backends: dict[str, Any] = {}


def fix_espeak_output(text: str) -> str:
    """Replace the raw espeak mnemonics that leak into IPA output (see the module docstring)."""
    return _LEAKED_RE.sub(lambda m: _LEAKED_MAP[m.group(0)], text)


def _configure_library() -> None:
    """Point phonemizer at the espeak-ng library and data of the ``espeakng-loader`` wheel."""
    try:
        import espeakng_loader
        from phonemizer.backend.espeak.wrapper import EspeakWrapper
    except ImportError as e:  # pragma: no cover - environment problem
        raise FinetuneError(
            problems=[Problem("environment", "", f"IPA needs phonemizer and espeakng-loader ({e})")]
        ) from None
    EspeakWrapper.set_library(espeakng_loader.get_library_path())
    EspeakWrapper.set_data_path(espeakng_loader.get_data_path())


def _backend(espeak_language: str) -> Any:
    """One espeak-ng instance per voice (phonemizer's ``EspeakWrapper``), created on first use.

    The wrapper is phonemizer's ctypes binding of ``espeak_TextToPhonemes``; its backend class is
    bypassed because its per-line Python post-processing costs more than espeak itself.
    """
    with _lock:
        wrapper = _backends.get(espeak_language)
        if wrapper is not None:
            return wrapper
        _configure_library()
        from phonemizer.backend.espeak.wrapper import EspeakWrapper

        wrapper = EspeakWrapper()
        try:
            wrapper.set_voice(espeak_language)
        except RuntimeError as e:
            raise FinetuneError(
                problems=[Problem("espeak", "", f"unknown espeak-ng voice {espeak_language!r}: {e}")]
            ) from None
        _backends[espeak_language] = wrapper
        return wrapper


def _clean(raw: str) -> str:
    """espeak's IPA for one chunk -> plain IPA: no language flags, stress marks, phoneme separators."""
    line = _FLAGS_RE.sub("", raw.replace("\n", " "))
    line = _DROP_RE.sub("", line)
    return fix_espeak_output(" ".join(line.split()))


def espeak_version() -> str:
    """The espeak-ng version used for transcription, e.g. ``1.52.0``."""
    _configure_library()
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    return ".".join(str(v) for v in EspeakWrapper().version)


def transcription_id(espeak_language: str) -> str:
    """What identifies a transcription: voice, espeak-ng version, our fix revision (for caches)."""
    return f"espeak-ng-{espeak_version()}:{espeak_language}:fix{FIX_REVISION}"


def split_punctuation(text: str) -> list[tuple[str, str]]:
    """``text`` as ``(kind, piece)`` pairs, kind ``"w"`` (words) or ``"p"`` (a punctuation run).

    Punctuation pieces keep one space on a side where the text had whitespace.
    """
    out: list[tuple[str, str]] = []
    for piece in _PUNCT_RE.split(" ".join(text.split())):
        if not piece:
            continue
        if _PUNCT_RE.fullmatch(piece):
            lead = " " if piece[0].isspace() else ""
            trail = " " if piece[-1].isspace() else ""
            out.append(("p", lead + piece.strip() + trail))
        elif piece.strip():
            out.append(("w", piece.strip()))
    return out


def transcribe(texts: Sequence[str], espeak_language: str) -> list[str]:
    """Transcribe ``texts`` to IPA with the espeak-ng voice ``espeak_language`` (e.g. ``ru``, ``en-us``).

    Returns one string per text: IPA without stress marks, words separated by one space,
    punctuation preserved. Empty or ``None`` texts give ``""``.
    """
    texts = ["" if t is None else str(t) for t in texts]
    if not texts:
        return []
    wrapper = _backend(espeak_language)
    # Punctuation is split off here (phonemizer's preserve_punctuation mode returns two lines
    # for one on texts such as "rysunek 1.1."), each word chunk goes to espeak, and the
    # punctuation is put back between the transcribed chunks.
    pieces = [split_punctuation(t) for t in texts]
    chunks = [piece for ps in pieces for kind, piece in ps if kind == "w"]
    with _lock:  # espeak's C state is not thread-safe
        ipa_chunks = [_clean(wrapper.text_to_phonemes(chunk)) for chunk in chunks]
    it = iter(ipa_chunks)
    out = []
    for ps in pieces:
        parts = []
        for kind, piece in ps:
            parts.append(next(it) if kind == "w" else piece)
        out.append(_SPACES_RE.sub(" ", "".join(parts)).strip())
    return out
