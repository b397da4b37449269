"""Guards for the server tests."""

from __future__ import annotations

import time
from typing import Any


def slow_allow(value: Any, ctx: Any) -> bool:
    time.sleep(0.8)
    return True
