"""Waiting for a condition in tests without asserting a wall-clock time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` every 10 ms until it is true or ``timeout`` seconds passed.

    The timeout is a generous bound for a shared, loaded machine, not a measurement:
    a test asserts the result, never how long it took.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
