"""Guards written the way many guardrail libraries write them: on Python's re."""

from __future__ import annotations

import re
from typing import Any

_WORDS = re.compile(r"^(\w+\s?)*$")  # catastrophic on "aaaa...!"


def only_words(value: Any, ctx: Any) -> bool:
    return _WORDS.match(str(value)) is not None


def no_trailing_as(value: Any, ctx: Any) -> bool:
    return re.search(r"(a+)+$", str(value)) is None


def safe(value: Any, ctx: Any) -> bool:
    return re.search(r"^[a-z]+$", str(value)) is not None
