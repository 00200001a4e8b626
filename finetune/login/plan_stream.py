"""plan.json's trial records read one line at a time, for readers of every trial that need
only one at a time (collect): a 100k-trial plan is then never held whole in memory.

It relies on how finetune.login.plan_file.dump writes version 2 (the header indented, then
``"trials": [`` and one trial per line, then ``TAIL``) and says ``NotStreamable`` the moment
the text is laid out otherwise (version 1, edited by hand, cut short): the caller then reads the
file whole with json, which also names what is wrong with it. Records come out as
``plan_file.records`` makes them (whole, version 1's form, not validated).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from finetune.login.plan_file import PLAN_VERSION, records

TRIALS_LINE = '  "trials": [\n'
_BATCH = 512  # records expanded at a time (plan_file.records walks a list)


class NotStreamable(Exception):
    """The file is not laid out as plan_file.dump writes it: read it whole instead."""


def open_plan(path: str) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """(header, records): the header is plan.json without ``"trials"`` (version, sources,
    groups, sets); ``records`` yields each trial's whole record as the file is read, and raises
    NotStreamable where a line is not one of dump's (nothing of it can be trusted then)."""
    f = open(path, encoding="utf-8")  # noqa: SIM115 (closed by the generator, or here on failure)
    try:
        head = []
        for line in f:
            if line == TRIALS_LINE:
                break
            head.append(line)
        else:
            raise NotStreamable(f"{path}: no {TRIALS_LINE.strip()!r} line")
        text = "".join(head).rstrip()
        if not text.endswith(","):
            raise NotStreamable(f"{path}: the header does not end before the trials")
        try:
            header = json.loads(text[:-1] + "\n}")
        except ValueError as e:
            raise NotStreamable(f"{path}: header: {e}") from None
        if not isinstance(header, dict) or header.get("version") != PLAN_VERSION or "trials" in header \
                or not isinstance(header.get("sets"), list):
            raise NotStreamable(f"{path}: not a version {PLAN_VERSION} plan as dump writes it")
    except BaseException:
        f.close()
        raise
    return header, _records(f, path, header)


def _records(f: Any, path: str, header: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with f:
        sets, batch, more = header["sets"], [], None  # more: the last record line ended in ","
        for line in f:
            body = line.strip()
            if body == "]":
                if more or f.read() != "}\n":  # ("]" after a "," or text after the end: not dump's)
                    raise NotStreamable(f"{path}: the trials do not end as dump ends them")
                break
            if not line.startswith("    {") or more is False:
                raise NotStreamable(f"{path}: a line in the trials is not one record")
            more = body.endswith(",")
            try:
                batch.append(json.loads(body[:-1] if more else body))
            except ValueError as e:
                raise NotStreamable(f"{path}: a trial line: {e}") from None
            if len(batch) >= _BATCH:
                yield from records({"version": PLAN_VERSION, "sets": sets, "trials": batch})
                batch = []
        else:
            raise NotStreamable(f"{path}: cut short")
        yield from records({"version": PLAN_VERSION, "sets": sets, "trials": batch})
