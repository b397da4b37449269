"""Policy test cases: "this input, under these labels, must be denied by this policy".

A cases file (TOML or JSON) holds ``[[case]]`` entries::

    [[case]]
    name = "an AWS key in a prompt is denied"
    labels = ["exe:llm:gpt-4o"]
    input = "my key is AKIAABCDEFGHIJKLMNOP"
    expect = "deny"                          # allow | deny | ask | warn
    guards = { "no-cloud-keys" = "deny" }    # optional: outcome per guard
    reasons = ["credential"]                 # optional: each is a substring of some reason
    estimate = { tokens = 1200 }             # optional: the operation's estimate
    usage = { tokens = 900, cost = "$0.01" } # optional: settled when allowed
    output = "mail bob@example.com"          # optional: after-guards see it at settle
    expect_after = "warn"                    # optional: the settle's action
    run = "budget"                           # optional: cases naming one run share its budgets

JSON: ``{"case": [...]}`` or a bare list. Cases run in file order through a
real enforcer (``scratch_enforcer``): a fresh memory store and a temporary
ledger per file, the policy's real guards in real workers.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from guardpool.policy.labels import MAX_LABELS, validate_label
from guardpool.policy.loader import Policy
from guardpool.policy.model import Decision, Operation, Usage
from guardpool.runner.enforcer import Enforcer

Action = Literal["allow", "deny", "ask", "warn"]
GuardOutcome = Literal["allow", "deny", "ask", "warn", "timeout", "error", "not-run"]


class Case(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    labels: list[str]
    input: str = ""
    expect: Action
    guards: dict[str, GuardOutcome] = msgspec.field(default_factory=dict)
    reasons: list[str] = msgspec.field(default_factory=list)
    estimate: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    output: str | None = None
    expect_after: Action | None = None
    run: str | None = None
    principal: str = ""


class _File(msgspec.Struct, forbid_unknown_fields=True):
    case: list[Case] = msgspec.field(default_factory=list)


class CasesError(ValueError):
    """A cases file that cannot be used; the message names the file, case and key."""


@dataclass
class Loaded:
    path: Path
    cases: list[Case]
    lines: list[int]  # line of each case in the file (1 when unknown)


def load(path: Path, policy: Policy) -> Loaded:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CasesError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CasesError(f"{path}: not UTF-8 (byte {exc.start})") from None
    try:
        data: Any = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CasesError(f"{path}: invalid {path.suffix.lstrip('.').upper()}: {exc}") from None
    if isinstance(data, list):
        data = {"case": data}
    try:
        cases = msgspec.convert(data, _File).case
    except msgspec.ValidationError as exc:
        where = re.sub(r"`\$\.case\[(\d+)\]", lambda m: f"`case[{int(m[1]) + 1}]", str(exc))
        raise CasesError(f"{path}: {where}") from None
    if not cases:
        raise CasesError(f"{path}: no cases (write [[case]] entries)")
    for i, case in enumerate(cases, 1):
        _check(path, i, case, policy)
    return Loaded(path, cases, _case_lines(text, len(cases), path.suffix.lower() == ".json"))


def _check(path: Path, i: int, case: Case, policy: Policy) -> None:
    where = f"{path}: case[{i}] ({case.name!r})"
    if not case.labels:
        raise CasesError(f"{where}: labels: at least one label")
    if len(case.labels) > MAX_LABELS:  # Operation refuses it: a traceback when the case ran
        raise CasesError(
            f"{where}: labels: at most {MAX_LABELS} per operation, not {len(case.labels)}"
        )
    for label in case.labels:
        try:
            validate_label(label)
        except ValueError as exc:
            raise CasesError(f"{where}: labels: {exc}") from None
    unknown = [g for g in case.guards if g not in policy.guards]
    if unknown:
        raise CasesError(f"{where}: guards: no guard named {', '.join(map(repr, unknown))}")
    for key in ("estimate", "usage"):
        try:
            _usage(getattr(case, key))
        except (TypeError, ValueError) as exc:
            raise CasesError(f"{where}: {key}: {exc}") from None
    if case.expect_after is not None and case.expect not in ("allow", "warn"):
        raise CasesError(f"{where}: expect_after needs an allowed check (expect allow or warn)")


def _usage(data: dict[str, Any] | None) -> Usage | None:
    return None if data is None else Usage(**data)


def _case_lines(text: str, n: int, is_json: bool) -> list[int]:
    marker = re.compile(r'^\s*\{?\s*"name"\s*:' if is_json else r"^\s*\[\[\s*case\s*\]\]")
    found = [i for i, line in enumerate(text.splitlines(), 1) if marker.search(line)]
    return found if len(found) == n else [1] * n


# -- running ------------------------------------------------------------------------------


@dataclass
class Result:
    case: Case
    line: int
    decision: Decision
    after: Decision | None
    mismatches: list[tuple[str, str, str]] = field(default_factory=list)  # what, want, got

    @property
    def passed(self) -> bool:
        return not self.mismatches


def run(enforcer: Enforcer, loaded: Loaded) -> list[Result]:
    results = []
    for i, (case, line) in enumerate(zip(loaded.cases, loaded.lines, strict=True), 1):
        scope = enforcer.run(case.run or f"case-{i}", principal=case.principal)
        op = Operation(labels=tuple(case.labels), input=case.input, estimate=_usage(case.estimate))
        decision = scope.check(op)
        after = None
        if decision.allowed:
            if case.usage is not None or case.output is not None:
                usage = _usage(case.usage) or Usage()
                after = scope.settle(decision, usage, output=case.output)
            else:
                scope.release(decision)
        results.append(Result(case, line, decision, after, compare(case, decision, after)))
    return results


def compare(case: Case, d: Decision, after: Decision | None) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    if d.action != case.expect:
        out.append(("action", case.expect, d.action))
    outcomes = {v.guard: v.outcome for v in d.verdicts if v.phase == "before"}
    for guard, want in case.guards.items():
        got = outcomes.get(guard, "not-run")
        if got != want:
            out.append((f"guard {guard}", want, got))
    for text in case.reasons:
        if not any(text in r for r in d.reasons):
            out.append(("reason containing", repr(text), "; ".join(d.reasons) or "(no reasons)"))
    if case.expect_after is not None:
        got_after = after.action if after is not None else "(not settled)"
        if got_after != case.expect_after:
            out.append(("after action", case.expect_after, got_after))
    return out


def as_json(r: Result) -> dict[str, Any]:
    return {
        "name": r.case.name,
        "line": r.line,
        "passed": r.passed,
        "mismatches": [{"what": w, "expected": e, "got": g} for w, e, g in r.mismatches],
        "decision": {
            "action": r.decision.action,
            "reasons": list(r.decision.reasons),
            "guards": {v.guard: v.outcome for v in r.decision.verdicts},
        },
        "after": None if r.after is None else {"action": r.after.action},
    }


def render_failure(r: Result, path: Path) -> str:
    shown = r.case.input if len(r.case.input) <= 60 else r.case.input[:57] + "..."
    lines = [
        f"FAIL {path}:{r.line} {r.case.name}",
        f"     labels {', '.join(r.case.labels)}; input {shown!r}",
    ]
    for what, want, got in r.mismatches:
        lines.append(f"  - {what}: {want}")
        lines.append(f"  + {what}: {got}")
    if r.decision.reasons:
        lines.append(f"     reasons: {'; '.join(r.decision.reasons)}")
    return "\n".join(lines)
