"""Is a Python ``re`` pattern ReDoS-prone, and with which attack? (the entry point)

Data flow: pattern + flags + how it is called (``search``/``match``/
``fullmatch``; ``findall``, ``sub``, ``split`` and friends scan like
``search``) -> ``nfa.build`` (Python's own parser) -> ``ambiguity.analyse_nfa``
(EDA / IDA degree on the automaton) -> ``Finding`` per dangerous ambiguity,
with its attack ``prefix + pump^n + suffix``. ``confirm.confirm`` times the
real engine on it; ``guardpool lint`` and ``guardpool fuzz`` consume both.

A finding is *static*: it says the automaton is ambiguous in a way a
backtracking engine pays for (exponentially, or polynomially with degree >= 3)
and that the attack makes the match fail. It is sound for what the automaton
models; the approximations (lookarounds, backreferences, large bounded
repeats) are listed in ``Report.notes``. See docs/regex.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from guardpool.analysis.ambiguity import Ambiguity, Attack, analyse_nfa
from guardpool.analysis.nfa import build
from guardpool.analysis.thompson import C, P, TooLarge

__all__ = ["C", "P", "Attack", "Finding", "Report", "analyse", "inspect", "mode_of"]  # noqa: RUF022

Kind = Literal["exponential", "polynomial"]
MIN_DEGREE = 3  # quadratic backtracking is left to the deadline; cubic and worse is reported
_SCANNING = {"search", "findall", "finditer", "sub", "subn", "split"}


def mode_of(call: str) -> str:
    """How the engine runs for a call style: ``search``, ``match`` or ``fullmatch``."""
    if call in ("match", "fullmatch"):
        return call
    return "search"


@dataclass(frozen=True)
class Finding:
    kind: Kind
    degree: int  # polynomial degree (time ~ n^degree); 0 for exponential
    why: str
    plan: Attack

    @property
    def exponential(self) -> bool:
        return self.kind == "exponential"

    @property
    def pump(self) -> str:
        return self.plan.parts[0][0]

    def attack(self, length: int) -> str:
        """An attack string of about ``length`` characters (at least one pump)."""
        fixed = len(self.plan.prefix) + len(self.plan.suffix)
        per = sum(len(p) + len(c) for p, c in self.plan.parts) or 1
        return self.plan.text(max(1, (length - fixed) // per))


@dataclass(frozen=True)
class Report:
    findings: list[Finding]
    error: str = ""  # the pattern does not compile, or is too large to analyse
    notes: tuple[str, ...] = field(default_factory=tuple)


def _why(amb: Ambiguity, mode: str) -> str:
    pump = amb.attack.parts[0][0]
    if amb.kind == "exponential":
        return (
            f"a repeated part can match {pump!r} in two different ways, so each extra "
            f"{pump!r} doubles the paths a failing match tries (exponential)"
        )
    scan = " (counting re.search's scan over start positions)" if mode == "search" else ""
    return (
        f"{amb.degree} unbounded repeats can share the same run of text{scan}, so a failing "
        f"match tries about n^{amb.degree} ways to split it (polynomial, degree {amb.degree})"
    )


def inspect(pattern: str | bytes, flags: int = 0, call: str = "search") -> Report:
    """The full static verdict for one pattern as ``re.<call>`` runs it."""
    mode = mode_of(call)
    try:
        nfa = build(pattern, flags, mode=mode)
    except re.error as exc:
        return Report([], f"does not compile: {exc}")
    except (TooLarge, RecursionError, OverflowError, MemoryError):
        return Report([], "too large to analyse")
    except (TypeError, ValueError) as exc:
        return Report([], f"cannot analyse: {exc}")
    ambiguities, exhausted = analyse_nfa(nfa)
    notes = sorted(nfa.notes)
    if exhausted:
        notes.append("the search budget ran out: some ambiguities may be missed")
    findings = []
    for amb in ambiguities:
        if amb.kind == "polynomial" and amb.degree < MIN_DEGREE:
            continue
        findings.append(Finding(amb.kind, amb.degree, _why(amb, mode), amb.attack))
    return Report(findings, "", tuple(notes))


def analyse(pattern: str | bytes, flags: int = 0, call: str = "search") -> list[Finding]:
    """ReDoS findings for a pattern, worst first (empty when none, or unanalysable)."""
    return inspect(pattern, flags, call).findings
