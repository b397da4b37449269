"""Every declarative regex goes through RE2.

RE2 matches in time linear in the input and never backtracks, so hostile text
cannot make a ``deny_regex`` hang the way ``(a+)+$`` hangs Python's ``re``. The
price is a smaller language: no backreferences, no lookaround, no atomic or
possessive groups. A pattern RE2 rejects is a PolicyError at load time, with a
rewrite hint where one exists.

A bank of patterns is compiled into one ``re2.Set`` and matched in a single
pass over the input bytes; each pattern is also compiled on its own first, to
validate it with a precise reason and to report its program size
(``guardpool lint``).

``re2`` ships without type information; this module is the typed wrapper the
rest of guardpool goes through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import re2

from guardpool.policy.errors import PolicyError

DEFAULT_MAX_MEM = 8 << 20

_NO_BACKTRACKING = "RE2 never backtracks, so atomic and possessive forms are unnecessary"
_NO_BACKREFERENCES = (
    "RE2 has no backreferences: match the repeated text explicitly, or use a callable guard"
)

# RE2 reports the offending fragment after the last ": " of its message
# ("invalid perl operator: (?="); hints are keyed on that fragment's start, so a
# hint always speaks about the construct RE2 actually refused.
_FRAGMENT_HINTS: tuple[tuple[str, str], ...] = (
    ("\\Z", "RE2 spells end-of-text '\\z' (lowercase); '\\Z' is Python-only"),
    (
        "(?=",
        "RE2 has no lookaround (no lookahead): split the check into deny_regex and "
        "require_regex, or use a callable guard",
    ),
    (
        "(?!",
        "RE2 has no lookaround (no negative lookahead): split the check into deny_regex and "
        "require_regex, or use a callable guard",
    ),
    (
        "(?<=",
        "RE2 has no lookaround (no lookbehind): match the preceding text explicitly, "
        "or use a callable guard",
    ),
    ("(?<!", "RE2 has no lookaround (no negative lookbehind): use a callable guard"),
    ("(?>", f"drop the atomic group '(?>...)' -> '(?:...)': {_NO_BACKTRACKING}"),
    ("(?P=", _NO_BACKREFERENCES),
)
_BACKREFERENCE = re.compile(r"^\\[1-9]")
_REPETITION = re.compile(r"^\{(\d*)(?:,(\d*))?\}$")


def _options(max_mem: int) -> Any:
    options = re2.Options()
    options.log_errors = False  # errors become PolicyErrors, not stderr noise
    options.max_mem = max_mem
    return options


def _hint(pattern: str, message: str) -> str:
    fragment = message.rpartition(": ")[2]
    for start, hint in _FRAGMENT_HINTS:
        if fragment.startswith(start):
            return hint
    # RE2 cuts a named backreference's fragment to "(?P".
    if fragment == "(?P" and "(?P=" in pattern:
        return _NO_BACKREFERENCES
    if message.startswith("bad repetition operator") and fragment.endswith("+"):
        return f"drop the possessive '+' ({fragment!r} -> {fragment[:-1]!r}): {_NO_BACKTRACKING}"
    if _BACKREFERENCE.match(fragment):
        return _NO_BACKREFERENCES
    if message.startswith("invalid repetition size"):
        bounds = _REPETITION.match(fragment)
        if (
            bounds
            and bounds.group(2)
            and bounds.group(1)
            and int(bounds.group(2)) < int(bounds.group(1))
        ):
            return "the upper bound of '{m,n}' must not be below the lower one"
        return (
            "RE2 allows at most 1000 repetitions, nested repeats multiplied: use a "
            "smaller bound, or '+'/'*' if any length will do"
        )
    if message.startswith("pattern too large"):
        return (
            "the compiled program exceeds [guards] regex_max_mem: simplify the pattern "
            "or raise regex_max_mem"
        )
    return ""


def rejection(pattern: str, exc: Exception) -> str:
    """RE2's reason for refusing ``pattern``, with a rewrite hint where one exists."""
    raw = exc.args[0] if exc.args else str(exc)
    message = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    hint = _hint(pattern, message)
    # RE2 quotes the offending fragment raw: a newline in the pattern would break the
    # one-line error (``file: key: reason``), so control characters are escaped.
    shown = _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)
    return f"RE2 rejects {pattern!r}: {shown}" + (f" (hint: {hint})" if hint else "")


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def compile_pattern(pattern: str, max_mem: int = DEFAULT_MAX_MEM) -> Pattern:
    """One RE2 pattern (for ``ctx.regex``); raises ValueError with RE2's reason and a hint.

    The result is ``re``-like (``search``, ``match``, ``sub``, ...) and takes
    text holding lone surrogates (see ``Pattern``).
    """
    try:
        return Pattern(re2.compile(pattern, _options(max_mem)))
    except re2.error as exc:
        raise ValueError(rejection(pattern, exc)) from None


# A lone surrogate: guard inputs carry them intact (policy/inputs.py), and re2
# encodes a str as strict UTF-8, which refuses them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid(text: Any) -> Any:
    if isinstance(text, str) and _LONE_SURROGATE.search(text) is not None:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text


class Pattern:
    """An RE2 pattern that also matches text holding lone surrogates.

    re2 encodes a ``str`` as strict UTF-8 and raises ``UnicodeEncodeError`` on a
    lone surrogate, so a guard calling ``ctx.regex(p).search(text)`` would fail
    (and fail open under ``on_error = "allow"``) exactly on the hostile text it
    is there to judge. Each lone surrogate is matched as U+FFFD instead: one
    character for one, so positions and spans still index the original text
    (``match.string`` and groups show U+FFFD). Text without one is passed as is.
    ``compiled`` is re2's own object.
    """

    __slots__ = ("compiled",)

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled

    def search(self, text: Any, *args: Any) -> Any:
        return self.compiled.search(_valid(text), *args)

    def match(self, text: Any, *args: Any) -> Any:
        return self.compiled.match(_valid(text), *args)

    def fullmatch(self, text: Any, *args: Any) -> Any:
        return self.compiled.fullmatch(_valid(text), *args)

    def finditer(self, text: Any, *args: Any) -> Any:
        return self.compiled.finditer(_valid(text), *args)

    def findall(self, text: Any, *args: Any) -> Any:
        return self.compiled.findall(_valid(text), *args)

    def split(self, text: Any, maxsplit: int = 0) -> Any:
        return self.compiled.split(_valid(text), maxsplit)

    def sub(self, repl: Any, text: Any, count: int = 0) -> Any:
        return self.compiled.sub(_valid(repl), _valid(text), count)

    def subn(self, repl: Any, text: Any, count: int = 0) -> Any:
        return self.compiled.subn(_valid(repl), _valid(text), count)

    def __getattr__(self, name: str) -> Any:  # pattern, groups, groupindex, programsize
        return getattr(self.compiled, name)


class RegexBank:
    """Patterns matched together in one pass over the input's bytes.

    A rejected pattern raises PolicyError with key ``[index]``; the caller
    prefixes the rest of the key path (``guard[1].deny_regex``).
    """

    def __init__(self, patterns: Sequence[str], max_mem: int = DEFAULT_MAX_MEM) -> None:
        self.patterns = tuple(patterns)
        self._sizes: list[int] = []
        for index, pattern in enumerate(self.patterns):
            try:
                compiled = re2.compile(pattern, _options(max_mem))
            except re2.error as exc:
                raise PolicyError(rejection(pattern, exc), key=f"[{index}]") from None
            self._sizes.append(int(compiled.programsize))
        # Each pattern compiled alone, but the Set (one automaton for all of
        # them) can still exceed max_mem; RE2 gives no reason beyond that.
        self._set = re2.Set.SearchSet(_options(max_mem))
        for pattern in self.patterns:
            self._set.Add(pattern.encode("utf-8"))
        # The compiled set's own Match, past the wrapper's str check (we pass bytes).
        self._match = getattr(self._set, "_set", self._set).Match
        if self.patterns:
            try:
                self._set.Compile()
            except re2.error:
                raise PolicyError(
                    f"the bank of {len(self.patterns)} patterns together exceeds "
                    f"regex_max_mem ({max_mem} bytes): split it across guards or raise "
                    "[guards] regex_max_mem"
                ) from None

    def first_match(self, data: bytes) -> int | None:
        """Index of the lowest-numbered matching pattern, or None."""
        if not self.patterns:
            return None
        hits: list[int] | None = self._match(data)
        return min(hits) if hits else None

    def program_sizes(self) -> list[int]:
        """RE2 program size of each pattern compiled alone (a cost measure for lint)."""
        return list(self._sizes)


_ASCII_ONLY = {
    "w": "'\\w' is ASCII-only in RE2 (Python re matches any Unicode letter or digit): "
    "use [\\pL\\pN_] for Unicode words",
    "W": "'\\W' matches every non-ASCII character in RE2, letters included (Python re: "
    "only non-word characters): use [^\\pL\\pN_]",
    "d": "'\\d' is ASCII-only in RE2 (Python re matches any Unicode digit): use \\pN or \\p{Nd}",
    "D": "'\\D' matches non-ASCII digits in RE2 (Python re does not): use \\P{Nd}",
    "s": "'\\s' is ASCII-only in RE2: it does not match non-breaking or other Unicode "
    "spaces; use [\\s\\p{Z}]",
    "S": "'\\S' matches Unicode spaces in RE2 (Python re does not): use [^\\s\\p{Z}]",
    "b": "'\\b' uses ASCII word characters in RE2: a boundary next to 'é' differs from Python re",
    "B": "'\\B' uses ASCII word characters in RE2: a non-boundary next to 'é' differs from "
    "Python re",
}
_DOLLAR = (
    "'$' matches only at the very end of the text in RE2 (Python re also matches before a "
    "final newline): use '\\n?$' if a trailing newline must be tolerated, or '\\z' to be explicit"
)
_MULTILINE_FLAG = re.compile(r"\(\?[A-Za-z]*m")


def re_semantic_warnings(pattern: str) -> list[str]:
    """Where ``pattern`` means something different under RE2 than under Python ``re``.

    The pattern is scanned escape by escape, so ``\\\\w`` (a literal backslash
    then ``w``) and ``[$]`` are not reported. One warning per construct.
    """
    escapes: list[str] = []
    bare_dollar = False
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            escapes.append(pattern[i + 1])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A ']' first in a class is a literal, not the end of the class.
            if pattern.startswith("]", i + 1) or pattern.startswith("^]", i + 1):
                i += 2 if pattern[i + 1] == "]" else 3
                continue
        elif char == "$":
            bare_dollar = True
        i += 1
    warnings = [text for letter, text in _ASCII_ONLY.items() if letter in escapes]
    # With (?m), '$' means "before any newline or at the end" in both engines.
    if bare_dollar and not _MULTILINE_FLAG.search(pattern):
        warnings.append(_DOLLAR)
    return warnings
