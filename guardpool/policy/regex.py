"""Every declarative regex goes through RE2.

RE2 matches in time linear in the input and never backtracks, so hostile text
cannot make a ``deny_regex`` hang the way ``(a+)+$`` hangs Python's ``re``. The
price is a smaller language: no backreferences, no lookaround, no atomic or
possessive groups. A pattern RE2 rejects is a PolicyError at load time, with a
rewrite hint where one exists.

A bank of patterns is compiled into one ``re2.Set`` and matched in a single
pass over the input bytes; each pattern is also compiled on its own first, to
validate it and to report its program size (``guardpool lint``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import re2

from guardpool.policy.errors import PolicyError

DEFAULT_MAX_MEM = 8 << 20

# (substring of the pattern or RE2's message, hint). First match wins.
_HINTS: tuple[tuple[str, str], ...] = (
    ("\\Z", "RE2 spells end-of-text '\\z' (lowercase); '\\Z' is Python-only"),
    (
        "(?=",
        "RE2 has no lookahead: split the check into deny_regex and require_regex, "
        "or use a callable guard",
    ),
    (
        "(?!",
        "RE2 has no negative lookahead: use require_regex for the positive case, "
        "or a callable guard",
    ),
    ("(?<=", "RE2 has no lookbehind: match the preceding text explicitly, or use a callable guard"),
    ("(?<!", "RE2 has no negative lookbehind: use a callable guard"),
    ("(?>", "drop the atomic group: RE2 never backtracks, so it is unnecessary"),
    ("*+", "drop the possessive '+': RE2 never backtracks, so it is unnecessary"),
    ("++", "drop the possessive '+': RE2 never backtracks, so it is unnecessary"),
    ("?+", "drop the possessive '+': RE2 never backtracks, so it is unnecessary"),
    (
        "invalid repetition size",
        "RE2 allows at most {1000} repetitions: use a smaller bound, "
        "or '+'/'*' if any length will do",
    ),
    (
        "pattern too large",
        "the compiled program exceeds regex_max_mem: simplify the "
        "pattern or raise [guards] regex_max_mem",
    ),
)


def _options(max_mem: int) -> Any:
    options = re2.Options()
    options.log_errors = False  # errors become PolicyErrors, not stderr noise
    options.max_mem = max_mem
    return options


def _hint(pattern: str, message: str) -> str:
    for needle, hint in _HINTS:
        if needle in pattern or needle in message:
            return hint
    if any(f"\\{d}" in pattern for d in "123456789"):
        return "RE2 has no backreferences: match the repeated text explicitly, or use a callable"
    return ""


def rejection(pattern: str, exc: Exception) -> str:
    """RE2's reason for refusing ``pattern``, with a rewrite hint where one exists."""
    raw = exc.args[0] if exc.args else str(exc)
    message = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    hint = _hint(pattern, message)
    return f"RE2 rejects {pattern!r}: {message}" + (f" (hint: {hint})" if hint else "")


def compile_pattern(pattern: str, max_mem: int = DEFAULT_MAX_MEM) -> Any:
    """One RE2 pattern (for ``ctx.regex``); raises ValueError with RE2's reason."""
    try:
        return re2.compile(pattern, _options(max_mem))
    except re2.error as exc:
        raise ValueError(rejection(pattern, exc)) from None


class RegexBank:
    """Patterns matched together in one pass over the input's bytes."""

    def __init__(self, patterns: Sequence[str], max_mem: int = DEFAULT_MAX_MEM) -> None:
        self.patterns = tuple(patterns)
        self._sizes: list[int] = []
        for index, pattern in enumerate(self.patterns):
            try:
                compiled = re2.compile(pattern, _options(max_mem))
            except re2.error as exc:
                raise PolicyError(rejection(pattern, exc), key=f"[{index}]") from None
            self._sizes.append(int(compiled.programsize))
        self._set = re2.Set.SearchSet(_options(max_mem))
        for pattern in self.patterns:
            self._set.Add(pattern.encode("utf-8"))
        if self.patterns:
            try:
                self._set.Compile()
            except re2.error:
                raise PolicyError(
                    f"the bank of {len(self.patterns)} patterns exceeds regex_max_mem {max_mem}"
                ) from None

    def first_match(self, data: bytes) -> int | None:
        """Index of the lowest-numbered matching pattern, or None."""
        if not self.patterns:
            return None
        hits = self._set.Match(data)
        return min(hits) if hits else None

    def program_sizes(self) -> list[int]:
        return list(self._sizes)


def re_semantic_warnings(pattern: str) -> list[str]:
    """Where this pattern means something different under RE2 than under Python ``re``."""
    warnings = []
    for token, meaning in (
        (
            "\\w",
            "'\\w' is ASCII-only in RE2 (Python re matches any Unicode letter): use "
            "[\\pL\\pN_] for Unicode words",
        ),
        (
            "\\d",
            "'\\d' is ASCII-only in RE2 (Python re matches any Unicode digit): use \\pN "
            "for Unicode digits",
        ),
        ("\\b", "'\\b' uses ASCII word characters in RE2: a boundary next to 'é' differs"),
        (
            "\\s",
            "'\\s' is ASCII-only in RE2: it does not match non-breaking or other Unicode spaces",
        ),
    ):
        if token in pattern:
            warnings.append(meaning)
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        warnings.append(
            "'$' matches only at the very end in RE2 (Python re also matches before a final "
            "newline): use '\\n?$' if a trailing newline must be tolerated"
        )
    return warnings
