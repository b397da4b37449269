"""Colon-segmented operation labels and the patterns that match them.

A label names an operation hierarchically: ``op:cmd:git:push``,
``exe:llm:gpt-4o``. A pattern matches labels by segments:

- ``*`` alone matches every label;
- ``op:cmd`` is a hierarchical prefix: it matches ``op:cmd`` and everything
  under it (``op:cmd:git:push``), but not ``op:cmdx``;
- ``op:cmd:*`` matches the same set as ``op:cmd``; the trailing star is
  accepted because that is how people write "everything under";
- ``*`` as an inner segment matches exactly one segment (``exe:*:gpt-4o``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _segments(text: str, what: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} must be a non-empty string")
    if len(text) > 512:
        raise ValueError(f"{what} {text[:40]!r}... is longer than 512 characters")
    return text.split(":")


def validate_label(label: str) -> None:
    """Raise ValueError unless ``label`` is segments of ``[A-Za-z0-9_.-]`` joined by ``:``."""
    for seg in _segments(label, "a label"):
        if not _SEGMENT.match(seg):
            raise ValueError(
                f"bad label {label!r}: segment {seg!r} must be letters, digits, '_', '.' or '-'"
            )


def validate_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` is a valid label pattern."""
    segs = _segments(pattern, "a label pattern")
    for seg in segs:
        if seg != "*" and not _SEGMENT.match(seg):
            raise ValueError(
                f"bad label pattern {pattern!r}: segment {seg!r} must be '*' or letters, "
                "digits, '_', '.' or '-'"
            )


def match(pattern: str, label: str) -> bool:
    """True when ``pattern`` matches ``label`` (see the module docstring)."""
    if pattern == "*":
        return True
    pat = pattern.split(":")
    if pat[-1] == "*":
        pat.pop()
    segs = label.split(":")
    if len(segs) < len(pat):
        return False
    return all(p == "*" or p == s for p, s in zip(pat, segs, strict=False))


def matches_any(pattern: str, labels: Iterable[str]) -> bool:
    return any(match(pattern, label) for label in labels)


def specificity(pattern: str) -> tuple[int, int]:
    """Sort key for "most specific wins" (estimates, prices): higher is more specific.

    Deeper patterns first (segments counted without a trailing ``*``, which adds
    nothing: ``exe:llm:*`` matches what ``exe:llm`` matches), then at equal
    depth more literal segments (exact beats wildcard). So for
    ``exe:llm:gpt-4o``: ``exe:llm:gpt-4o`` > ``exe:*:gpt-4o`` > ``exe:llm`` > ``*``.
    """
    if pattern == "*":
        return (0, 0)
    segs = pattern.split(":")
    if segs[-1] == "*":
        segs.pop()
    return (len(segs), sum(1 for s in segs if s != "*"))
