"""The cross-language matrix: train on each language alone and on the union of all; every trial
evaluates on every language.

For languages A, B this is three train sets (A, B, A+B) covering the six cells A->A, A->B,
B->A, B->B, A+B->A, A+B->B; for n languages, n + 1 train sets (n = 1: just one).
"""

from __future__ import annotations

from collections.abc import Sequence


def language_matrix(languages: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """(train languages, eval languages) per trial, languages sorted; singles first, union last."""
    langs = sorted(set(languages))
    if not langs:
        return []
    sets = [[lang] for lang in langs]
    if len(langs) > 1:
        sets.append(list(langs))
    return [(train, list(langs)) for train in sets]


def cells(languages: Sequence[str]) -> list[tuple[tuple[str, ...], str]]:
    """Every (train set, eval language) cell the matrix covers."""
    return [(tuple(train), ev) for train, evals in language_matrix(languages) for ev in evals]
