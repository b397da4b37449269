"""Guards with one planted flaw each, for ``guardpool fuzz`` tests (one finding kind apiece)."""

from __future__ import annotations

import os
from typing import Any


def raises_on_bang(value: Any, ctx: Any) -> bool:
    if "!" in str(value):
        raise ValueError("unexpected punctuation")
    return True


def exits_on_long(value: Any, ctx: Any) -> bool:
    if len(str(value)) > 1000:
        os._exit(3)  # a native crash, as far as the pool can tell
    return True


def hoards_memory(value: Any, ctx: Any) -> bool:
    # 2000 bytes per input character: a 64 KiB input wants 128 MiB.
    return len(bytearray(len(str(value)) * 2000)) >= 0


def allow(value: Any, ctx: Any) -> bool:
    return True
