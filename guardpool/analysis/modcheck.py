"""ReDoS check of callable guards' modules: scan -> analyse -> confirm -> lint issues.

Data flow: module names (from the policy's ``call = "module:function"``) ->
``astscan`` (every ``re``/``regex`` use, with patterns followed through
constants and compiled objects) -> ``redos.inspect`` per (pattern, flags,
call style) -> the worst finding of each use is timed by ``confirm`` (children
in parallel, each under its own deadline) -> ``Issue``: GP101/GP102 when the
timing confirms it, GP103 "suspected" when it does not, GP104 when ``re``
itself refuses the pattern, GP105/GP106 when a module or pattern cannot be
analysed. Anything that goes wrong with one module or pattern becomes an
issue about that one; the others are still reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from guardpool.analysis.astscan import RegexUse, ScanProblem, scan_module_full
from guardpool.analysis.confirm import Confirmation, Job, confirm_many
from guardpool.analysis.redos import Finding, inspect
from guardpool.analysis.rules import Issue, issue

_SHOWN = 80  # characters of a pattern shown in a message


@dataclass(frozen=True)
class _Candidate:
    use: RegexUse
    findings: list[Finding]
    notes: tuple[str, ...]


def _where(file: str, line: int, col: int) -> str:
    try:
        rel = os.path.relpath(file)
        file = rel if not rel.startswith("..") else file
    except ValueError:
        pass
    return f"{file}:{line}:{col}"


def _shown(pattern: str | bytes) -> str:
    text = repr(pattern)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 5] + "…" + text[-4:]


def check_modules(
    modules: Iterable[str],
    *,
    confirm: bool = True,
    parallel: int = 2,
    deadline_s: float = 3.0,
) -> list[Issue]:
    issues: list[Issue] = []
    candidates: list[_Candidate] = []
    seen: set[tuple[str, int, int, str, str]] = set()
    for module in sorted(set(modules)):
        try:
            _file, uses, problems = scan_module_full(module)
        except Exception as exc:  # one module's failure must not lose the others
            problems, uses = [ScanProblem(module, 1, 1, f"scan failed: {exc!r}")], []
        for p in problems:
            issues.append(issue("GP105", _where(p.file, p.line, p.col), f"{module}: {p.message}"))
        for use in uses:
            key = (use.file, use.line, use.col, repr(use.pattern), use.method)
            if key in seen:
                continue
            seen.add(key)
            issues.extend(_inspect(use, candidates))
    if not candidates:
        return issues
    if not confirm:
        for c in candidates:
            f = c.findings[0]
            issues.append(_finding_issue(c, f, None, static_only=True))
        return issues
    # The worst finding of each use first; the next one only if that did not confirm.
    results: dict[int, tuple[Finding, Confirmation]] = {}
    for round_ in range(2):
        todo = [
            (i, c.findings[round_])
            for i, c in enumerate(candidates)
            if len(c.findings) > round_ and (i not in results or not results[i][1].confirmed)
        ]
        jobs = [
            Job(c.use.source_pattern, f.plan, c.use.flags, c.use.method, f.exponential)
            for i, f in todo
            for c in [candidates[i]]
        ]
        # The same pattern used twice the same way is timed once.
        unique = list(dict.fromkeys(jobs))
        timed = dict(
            zip(
                unique,
                confirm_many(unique, parallel=parallel, deadline_s=deadline_s),
                strict=True,
            )
        )
        for (i, f), job in zip(todo, jobs, strict=True):
            conf = timed[job]
            if i not in results or conf.confirmed:
                results[i] = (f, conf)
    for i, c in enumerate(candidates):
        f, conf = results[i]
        issues.append(_finding_issue(c, f, conf, static_only=False))
    return issues


def _inspect(use: RegexUse, candidates: list[_Candidate]) -> list[Issue]:
    where = _where(use.file, use.line, use.col)
    try:
        report = inspect(use.source_pattern, use.flags, use.method)
    except Exception as exc:  # a bug here must cost one pattern, not the report
        return [issue("GP106", where, f"{use.call}({_shown(use.pattern)}): {exc!r}")]
    if report.error.startswith("does not compile"):
        return [issue("GP104", where, f"{use.call}({_shown(use.pattern)}) {report.error}")]
    if report.error:
        return [issue("GP106", where, f"{use.call}({_shown(use.pattern)}): {report.error}")]
    if report.findings:
        candidates.append(_Candidate(use, report.findings, report.notes))
    return []


def _finding_issue(
    c: _Candidate, f: Finding, conf: Confirmation | None, *, static_only: bool
) -> Issue:
    use = c.use
    where = _where(use.file, use.line, use.col)
    details: dict[str, str | int | float | list[float]] = {
        "pattern": repr(use.source_pattern),
        "call": use.call,
        "method": use.method,
        "class": f.kind,
        "attack": f.plan.show(),
        "example": repr(f.attack(40))[:200],
    }
    if f.degree:
        details["degree"] = f.degree
    if use.via:
        details["via"] = use.via
    if c.notes:
        details["approximations"] = "; ".join(c.notes)
    label = "exponential" if f.exponential else f"polynomial, degree {f.degree}"
    if conf is not None and conf.confirmed:
        label = "exponential" if conf.growth == "exponential" else f"degree {conf.degree}"
    head = f"{use.call}({_shown(use.source_pattern)}) as .{use.method}()"
    if use.via:
        head += f" ({use.via})"
    if static_only or conf is None:
        code = "GP101" if f.exponential else "GP102"
        verdict = "not timed (--no-confirm)"
    else:
        details["measured"] = conf.describe()
        details["times_ms"] = [round(t * 1000, 2) for _, t in conf.points]
        details["sizes"] = ", ".join(str(n) for n, _ in conf.points)
        if conf.confirmed:
            code = "GP101" if conf.growth == "exponential" else "GP102"
            verdict = f"confirmed, {conf.describe()}"
        else:
            code = "GP103"
            verdict = f"not confirmed: {conf.describe()}"
    message = f"{head}: {f.why}; attack {f.plan.show()} ({label}); {verdict}"
    if conf is not None and conf.confirmed and conf.growth == "exponential" and not f.exponential:
        message = f"{head}: exponential on {f.plan.show()}; {verdict}"
    return issue(code, where, message, details)
