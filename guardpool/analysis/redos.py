"""Finding ReDoS-prone shapes in Python ``re`` patterns, and proving them.

guardpool's own regexes run on RE2 and cannot backtrack. Callable guards may
still use Python's ``re``; this module looks for the three shapes that make a
backtracking engine slow, on the pattern's parse tree (Python's own parser),
not by pattern-matching the pattern text:

- **nested quantifiers** ``(a+)+``, ``(a*)*``: exponential;
- **overlapping alternatives under a repeat** ``(a|aa)+``, ``(\\w|\\d)+``: exponential;
- **adjacent overlapping repeats** ``\\w+\\d+``, ``.*.*=``: polynomial.

For each finding it builds an attack string (a pump repeated, then a character
that makes the match fail) and times the real ``re`` on it in a subprocess
with a hard cap, so a report says "confirmed" only when it was.
"""

from __future__ import annotations

import importlib
import re
import string
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal

# Python's own regex parser and opcodes (private, stable since 3.11; untyped).
P: Any = importlib.import_module("re._parser")
C: Any = importlib.import_module("re._constants")

Kind = Literal["nested-quantifier", "overlapping-alternation", "adjacent-overlap"]

# The characters we reason about: printable ASCII covers what attack strings need.
ALPHABET = frozenset(string.printable)
_FAILERS = "!#\x00~;"
_UNBOUNDED = C.MAXREPEAT
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT)


@dataclass(frozen=True)
class Finding:
    kind: Kind
    why: str
    pump: str
    exponential: bool

    def attack(self, length: int) -> str:
        failer = next((c for c in _FAILERS if c not in self.pump), "!")
        return self.pump * max(1, length // max(1, len(self.pump))) + failer


def _category(cat: Any) -> set[str]:
    name = str(cat).lower()
    if "digit" in name:
        chars = set(string.digits)
    elif "word" in name:
        chars = set(string.ascii_letters + string.digits + "_")
    elif "space" in name:
        chars = set(" \t\n\r\f\v")
    else:
        chars = set()
    return set(ALPHABET - chars) if name.startswith("category_not") else chars


def first_chars(tree: Any) -> set[str]:
    """Characters that can start a match of ``tree`` (within ALPHABET)."""
    out: set[str] = set()
    for op, av in tree:
        nullable = False
        if op == C.LITERAL:
            out.add(chr(av))
        elif op == C.NOT_LITERAL:
            out |= ALPHABET - {chr(av)}
        elif op == C.ANY:
            out |= ALPHABET - {"\n"}
        elif op == C.IN:
            chars: set[str] = set()
            negate = False
            for iop, iav in av:
                if iop == C.NEGATE:
                    negate = True
                elif iop == C.LITERAL:
                    chars.add(chr(iav))
                elif iop == C.RANGE:
                    chars |= {chr(c) for c in range(iav[0], iav[1] + 1) if chr(c) in ALPHABET}
                elif iop == C.CATEGORY:
                    chars |= _category(iav)
            out |= (ALPHABET - chars) if negate else chars
        elif op == C.SUBPATTERN:
            sub = av[-1]
            out |= first_chars(sub)
            nullable = _nullable(sub)
        elif op == C.BRANCH:
            for branch in av[1]:
                out |= first_chars(branch)
        elif op in _REPEATS:
            out |= first_chars(av[2])
            nullable = av[0] == 0
        elif op == C.AT:
            nullable = True
        elif op == C.CATEGORY:
            out |= _category(av)
        if not nullable:
            break
    return out


def _nullable(tree: Any) -> bool:
    return all((op in _REPEATS and av[0] == 0) or op == C.AT for op, av in tree)


def _has_unbounded_repeat(tree: Any) -> bool:
    for op, av in tree:
        if op in _REPEATS and av[1] == _UNBOUNDED:
            return True
        if op == C.SUBPATTERN and _has_unbounded_repeat(av[-1]):
            return True
        if op == C.BRANCH and any(_has_unbounded_repeat(b) for b in av[1]):
            return True
    return False


def _branches(tree: Any) -> list[Any] | None:
    """The alternatives inside a repeated body (after unwrapping groups), if any.

    Python's parser factors common prefixes out, so ``(a|aa)`` arrives as
    ``a(?:|a)``: the branch can sit after other items.
    """
    for op, av in tree:
        if op == C.BRANCH:
            return list(av[1])
        if op == C.SUBPATTERN:
            found = _branches(av[-1])
            if found is not None:
                return found
    return None


def _pick(chars: set[str]) -> str:
    for c in "a1 xA_":
        if c in chars:
            return c
    return min(chars)


def _walk(tree: Any, findings: list[Finding]) -> None:
    items = list(tree)
    for i, (op, av) in enumerate(items):
        if op in _REPEATS:
            _, hi, body = av
            if hi == _UNBOUNDED or hi > 10:
                inner = [(o, a) for o, a in body]
                if _has_unbounded_repeat(inner):
                    chars = first_chars(inner)
                    if chars:
                        findings.append(
                            Finding(
                                "nested-quantifier",
                                "a repeated group contains another unbounded repeat: a "
                                "backtracking engine tries every way to split the input",
                                _pick(chars),
                                True,
                            )
                        )
                branches = _branches(inner)
                if branches and len(branches) > 1:
                    # An empty alternative is followed by the next iteration.
                    again = first_chars(inner)
                    sets = [first_chars(b) if b else again for b in branches]
                    for a in range(len(sets)):
                        for b in range(a + 1, len(sets)):
                            common = sets[a] & sets[b]
                            if common:
                                findings.append(
                                    Finding(
                                        "overlapping-alternation",
                                        "alternatives under a repeat can match the same text, so "
                                        "each character doubles the paths to try",
                                        _pick(common),
                                        True,
                                    )
                                )
                                break
                        else:
                            continue
                        break
            if hi == _UNBOUNDED and i + 1 < len(items):
                nxt_op, nxt_av = items[i + 1]
                if nxt_op in _REPEATS and nxt_av[1] == _UNBOUNDED:
                    common = first_chars(body) & first_chars(nxt_av[2])
                    if common:
                        findings.append(
                            Finding(
                                "adjacent-overlap",
                                "two adjacent unbounded repeats accept the same characters, so "
                                "the engine tries every split point between them",
                                _pick(common),
                                False,
                            )
                        )
            _walk(body, findings)
        elif op == C.SUBPATTERN:
            _walk(av[-1], findings)
        elif op == C.BRANCH:
            for branch in av[1]:
                _walk(branch, findings)


def analyse(pattern: str, flags: int = 0) -> list[Finding]:
    """ReDoS-prone shapes in a Python ``re`` pattern (empty when none, or unparsable)."""
    try:
        tree = P.parse(pattern, flags)
    except (re.error, RecursionError, OverflowError):
        return []
    findings: list[Finding] = []
    _walk(tree, findings)
    unique: dict[tuple[str, str], Finding] = {}
    for f in findings:
        unique.setdefault((f.kind, f.pump), f)
    return list(unique.values())


_PROBE = (
    "import re, sys, time\n"
    "p, s = sys.argv[1], sys.argv[2]\n"
    "t = time.perf_counter(); re.search(p, s)\n"
    "print((time.perf_counter() - t) * 1000)\n"
)


@dataclass(frozen=True)
class Confirmation:
    confirmed: bool
    ms: float  # measured time, or the cap when killed
    length: int
    attack: str


def confirm(pattern: str, finding: Finding, cap_s: float = 0.5) -> Confirmation:
    """Time the real ``re`` on the attack string in a subprocess killed at ``cap_s``."""
    length = 32 if finding.exponential else 20_000
    attack = finding.attack(length)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, pattern, attack],
            capture_output=True,
            text=True,
            timeout=cap_s,
            check=False,
        )
        ms = float(out.stdout.strip() or 0.0)
    except subprocess.TimeoutExpired:
        return Confirmation(True, cap_s * 1000, len(attack), attack)
    return Confirmation(ms >= 100.0, ms, len(attack), attack)
