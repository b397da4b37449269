"""``guardpool lint``'s rule codes: one place for each code's level, title and fix hint.

Levels: ``error`` (the policy itself is bad input: exit 2), ``danger`` (a
finding: exit 1), ``suspected`` (a static ReDoS finding the timing did not
confirm: reported, never fails), ``warning`` and ``info`` (exit 0).
"""

from __future__ import annotations

from typing import Literal

import msgspec

Level = Literal["error", "danger", "suspected", "warning", "info"]


class Rule(msgspec.Struct, frozen=True):
    code: str
    level: Level
    title: str
    hint: str


_REDOS_HINT = (
    "make the repeats unambiguous (one way to match each character: `[^,]*,` instead of "
    "`.*,`, no repeat inside a repeat over the same characters), bound them (`{0,64}`), "
    "use an atomic group or possessive repeat (Python 3.11+), or match with RE2: "
    "`ctx.regex(pattern)` in a callable guard, or a deny_regex/require_regex bank"
)

RULES: dict[str, Rule] = {
    r.code: r
    for r in (
        Rule("GP001", "error", "policy does not load", "fix the key named in the message"),
        Rule(
            "GP002",
            "error",
            "RE2 refuses a declarative pattern",
            "rewrite the pattern as the message suggests (docs/regex.md lists each case)",
        ),
        Rule("GP101", "danger", "ReDoS: exponential backtracking (confirmed)", _REDOS_HINT),
        Rule("GP102", "danger", "ReDoS: polynomial backtracking (confirmed)", _REDOS_HINT),
        Rule(
            "GP103",
            "suspected",
            "ReDoS suspected (static analysis; timing did not confirm it)",
            "check the attack by hand with the pattern's real call; rewrite as for GP101 "
            "if it is slow",
        ),
        Rule(
            "GP104",
            "danger",
            "a pattern in a guard module does not compile under Python re",
            "the guard raises re.error when this line runs: fix the pattern",
        ),
        Rule(
            "GP105",
            "warning",
            "a guard module could not be scanned",
            "make the module's Python source importable beside the policy",
        ),
        Rule(
            "GP106",
            "warning",
            "a pattern is too large to analyse",
            "split the pattern, or match it with RE2 (`ctx.regex`)",
        ),
        Rule(
            "GP201",
            "warning",
            "fail-open guard",
            'set on_timeout/on_error = "deny" unless an outage must let operations through',
        ),
        Rule(
            "GP202",
            "warning",
            "privileged guard with a long timeout",
            "lower timeout_ms: a slow input holds every matching operation that long",
        ),
        Rule(
            "GP203",
            "warning",
            "limit without an estimate",
            "add [estimates] or [prices] for the operations this limit matches",
        ),
        Rule(
            "GP204",
            "warning",
            "very large max_input_bytes",
            "lower pool.max_input_bytes unless every guard is linear-time",
        ),
        Rule("GP205", "warning", "more workers than cores can serve", "lower pool.workers"),
        Rule(
            "GP206",
            "warning",
            "guard timeout above the pool's CPU budget",
            "raise pool.job_cpu_ms to at least the guard's timeout_ms, or lower the timeout",
        ),
        Rule(
            "GP207",
            "info",
            "guard timeout above pool.job_timeout_ms",
            "job_timeout_ms is the deadline of GuardPool.submit jobs; a guard's deadline is its "
            "own timeout_ms (or guards.timeout_ms)",
        ),
        Rule(
            "GP301",
            "warning",
            "RE2 and Python re read this pattern differently",
            "see docs/regex.md, 'Where the same pattern means something else'",
        ),
        Rule("GP302", "info", "RE2 program size", "large programs cost memory per worker"),
    )
}


class Issue(msgspec.Struct, frozen=True, omit_defaults=True):
    """One lint result: a rule, where (``path:line:col`` or a config key), what and how to fix."""

    code: str
    level: Level
    where: str
    message: str
    hint: str
    details: dict[str, str | int | float | list[float]] = msgspec.field(default_factory=dict)


def issue(
    code: str,
    where: str,
    message: str,
    details: dict[str, str | int | float | list[float]] | None = None,
) -> Issue:
    rule = RULES[code]
    return Issue(code, rule.level, where, message, rule.hint, details or {})
