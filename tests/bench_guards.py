"""Guards with known appetites, for ``guardpool bench`` tests."""

from __future__ import annotations

import time
from typing import Any


def needs_110_mib(value: Any, ctx: Any) -> bool:
    block = bytearray(110 << 20)
    block[::4096] = b"\x01" * len(block[::4096])  # touch every page: resident, not just mapped
    return len(str(value)) >= 0


def hangs(value: Any, ctx: Any) -> bool:
    time.sleep(60)
    return True


def quick(value: Any, ctx: Any) -> bool:
    return "rm -rf" not in str(value)
