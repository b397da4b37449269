"""Colon-segmented operation labels and the patterns that match them.

A label names an operation hierarchically: ``op:cmd:git:push``,
``exe:llm:gpt-4o``. A pattern matches labels by segments:

- ``*`` alone matches every label;
- ``op:cmd`` is a hierarchical prefix: it matches ``op:cmd`` and everything
  under it (``op:cmd:git:push``), but not ``op:cmdx``;
- ``op:cmd:*`` matches the same set as ``op:cmd``; the trailing star is
  accepted because that is how people write "everything under";
- ``*`` as an inner segment matches exactly one segment (``exe:*:gpt-4o``).

The grammar (one for every door a label comes in by: the Python API, HTTP,
the CLI, the hook adapter and the config file)::

    label    = segment *( ":" segment )            ; at most MAX_SEGMENTS segments
    pattern  = pattern-segment *( ":" pattern-segment )
    segment  = 1*64( ALPHA / DIGIT / "_" / "." / "-" )   ; ASCII only
    pattern-segment = segment / "*"

and a label or pattern is at most ``MAX_LABEL_CHARS`` characters. The whole
string must match: no trailing newline, no whitespace, no control character,
no empty segment. Why so strict: a label that matches no pattern runs no guard
and charges no budget, so anything the matcher could read differently from
the author (``op:net:w\\n``, ``op:net:w ``, ``op::net``) is refused at the
door with a reason rather than silently let through.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# 512 characters and 32 segments are far beyond any real label (the longest in
# the examples is ~40 characters, 5 segments) and keep matching cost trivial.
MAX_LABEL_CHARS = 512
MAX_SEGMENTS = 32
MAX_SEGMENT_CHARS = 64
# Labels per operation: each is matched against every pattern of the policy.
MAX_LABELS = 64

_SEGMENT = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _describe_char(ch: str) -> str:
    name = unicodedata.name(ch, "")
    code = f"U+{ord(ch):04X}"
    return f"{code} {name}" if name else code


def _segments(text: object, what: str, *, star: bool) -> list[str]:
    """Split ``text`` into segments, or raise ValueError saying exactly what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, not {type(text).__name__}")
    if not text:
        raise ValueError(f"{what} must not be empty")
    shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
    if len(text) > MAX_LABEL_CHARS:
        raise ValueError(f"{what} {shown} is longer than {MAX_LABEL_CHARS} characters")
    for i, ch in enumerate(text):
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            kind = "whitespace" if ch.isspace() else "a control or invisible character"
            raise ValueError(f"bad {what} {shown}: {kind} ({_describe_char(ch)}) at position {i}")
    segs = text.split(":")
    if len(segs) > MAX_SEGMENTS:
        raise ValueError(f"bad {what} {shown}: more than {MAX_SEGMENTS} ':'-separated segments")
    for i, seg in enumerate(segs):
        if not seg:
            where = "leading" if i == 0 else "trailing" if i == len(segs) - 1 else "doubled"
            raise ValueError(f"bad {what} {shown}: empty segment ({where} ':')")
        if star and seg == "*":
            continue
        if len(seg) > MAX_SEGMENT_CHARS:
            raise ValueError(
                f"bad {what} {shown}: segment {seg[:20]!r}... is longer than "
                f"{MAX_SEGMENT_CHARS} characters"
            )
        if _SEGMENT.fullmatch(seg) is None:
            bad = next(c for c in seg if _SEGMENT.fullmatch(c) is None)
            allowed = "'*' or " if star else ""
            raise ValueError(
                f"bad {what} {shown}: segment {seg!r} has {bad!r} ({_describe_char(bad)}); "
                f"a segment is {allowed}ASCII letters, digits, '_', '.' or '-'"
            )
    return segs


def validate_label(label: str) -> None:
    """Raise ValueError unless ``label`` is in the label grammar (module docstring)."""
    _segments(label, "label", star=False)


def validate_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` is in the pattern grammar (module docstring)."""
    _segments(pattern, "label pattern", star=True)


def validate_labels(labels: object) -> tuple[str, ...]:
    """A sequence of labels checked one by one: the tuple, or ValueError naming the index."""
    if isinstance(labels, str):
        labels = (labels,)
    if not isinstance(labels, (list, tuple)):
        raise ValueError(f"labels must be a list of strings, not {type(labels).__name__}")
    if not labels:
        raise ValueError("labels must name at least one label")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels per operation, not {len(labels)}")
    for i, label in enumerate(labels):
        try:
            validate_label(label)
        except ValueError as exc:
            raise ValueError(f"labels[{i}]: {exc}") from None
    return tuple(labels)


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
