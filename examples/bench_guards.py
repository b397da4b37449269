"""A trivial callable guard for benchmarks: the cost of the machinery, not the guard."""

from __future__ import annotations

from typing import Any

from guardpool import Verdict


def allow(value: Any, ctx: Any) -> Verdict:
    return Verdict.allow()
