"""Polling for tests that wait on a real scheduler, process or file: one helper instead of a copy per file."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(check: Callable[[], object], timeout: float = 90, what: str = "condition", *,
               every: float = 0.2, context: Callable[[], str] | None = None) -> object:
    """Call ``check`` every ``every`` seconds until it returns something truthy, and return that.

    After ``timeout`` seconds raise AssertionError naming ``what``, followed by ``context()`` (a log
    tail, say) when given.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    extra = f"\n{context()}" if context is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
