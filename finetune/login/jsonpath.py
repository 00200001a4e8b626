"""JSON paths as messages name them: ``$.a.b``, ``$["not an identifier"]``, ``$.list[0]``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def join_path(parent: str, key: str | int) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; keys that are not identifiers use ``["..."]``; ints use ``[i]``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _IDENT.match(key):
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


def path_of(parts: Iterable[str | int]) -> str:
    path = "$"
    for part in parts:
        path = join_path(path, part)
    return path
