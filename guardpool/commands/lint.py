"""``guardpool lint``: compile a policy and flag what an attacker could exploit.

Dangers (exit 1): a ReDoS-prone ``re``/``regex`` pattern in a callable guard's
module. Warnings (exit 0): fail-open guards, privileged guards with long
timeouts, limits that will fall back to the safety margin, oversized inputs,
RE2-vs-re semantic differences.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass

import msgspec

from guardpool.analysis.astscan import scan_module
from guardpool.analysis.redos import analyse, confirm
from guardpool.policy.labels import match
from guardpool.policy.loader import Policy, load_policy
from guardpool.policy.regex import re_semantic_warnings

_LONG_PRIVILEGED_MS = 5000
_HUGE_INPUT = 16 << 20


@dataclass(frozen=True)
class Issue:
    level: str  # "danger" | "warning" | "info"
    where: str
    message: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--no-confirm",
        action="store_true",
        help="do not time suspected patterns against Python re (faster, less certain)",
    )


def check_regexes(policy: Policy) -> list[Issue]:
    issues = []
    for name, guard in policy.guards.items():
        for key, bank in guard.banks.items():
            for i, (pattern, size) in enumerate(
                zip(bank.patterns, bank.program_sizes(), strict=True)
            ):
                where = f"guard {name} {key}[{i}]"
                issues.append(Issue("info", where, f"RE2 program size {size}"))
                issues.extend(Issue("warning", where, w) for w in re_semantic_warnings(pattern))
    return issues


def check_callables(policy: Policy, *, confirm_findings: bool) -> list[Issue]:
    issues = []
    modules = sorted({g.spec.call.partition(":")[0] for g in policy.guards.values() if g.spec.call})
    for module in modules:
        for use in scan_module(module):
            for finding in analyse(use.pattern):
                where = f"{use.file}:{use.line} {use.call}({use.pattern!r})"
                attack = finding.attack(32 if finding.exponential else 20_000)
                verdict = "suspected"
                if confirm_findings:
                    c = confirm(use.pattern, finding)
                    attack = c.attack
                    verdict = (
                        f"confirmed: >= {c.ms:.0f} ms at length {c.length}"
                        if c.confirmed
                        else f"suspected ({c.ms:.0f} ms at length {c.length})"
                    )
                shown = (
                    attack
                    if len(attack) <= 60
                    else f"{finding.pump!r} * {len(attack) - 1} + {attack[-1]!r}"
                )
                issues.append(
                    Issue(
                        "danger",
                        where,
                        f"{finding.kind}: {finding.why}; attack: {shown} ({verdict})",
                    )
                )
    return issues


def check_settings(policy: Policy) -> list[Issue]:
    cfg = policy.config
    issues = []
    for name, g in policy.guards.items():
        spec = g.spec
        for field in ("on_timeout", "on_error"):
            if getattr(spec, field) == "allow":
                issues.append(
                    Issue(
                        "warning",
                        f"guard {name}",
                        f'{field} = "allow": this guard fails open (allowed, audited as warn)',
                    )
                )
        if spec.privileged and (spec.timeout_ms or 0) > _LONG_PRIVILEGED_MS:
            issues.append(
                Issue(
                    "warning",
                    f"guard {name}",
                    f"privileged guard with timeout_ms = {spec.timeout_ms}: a slow input holds "
                    "every matching operation that long",
                )
            )
    for limit in policy.limits:
        estimated = any(
            match(p, limit.pattern) or match(limit.pattern, p)
            for p in (*cfg.estimates, *cfg.prices)
        )
        needs = [d for d in limit.dimensions if d != "calls"]
        if needs and not estimated and limit.enforcement == "fail-fast":
            issues.append(
                Issue(
                    "warning",
                    f'limits."{limit.pattern}"',
                    f"no [estimates] or [prices] for {', '.join(needs)}: operations without their "
                    f"own estimate fall back to the {limit.margin:.0%} safety margin",
                )
            )
    if cfg.pool.max_input_bytes > _HUGE_INPUT:
        issues.append(
            Issue(
                "warning",
                "pool.max_input_bytes",
                f"{cfg.pool.max_input_bytes} bytes: every guard must handle this",
            )
        )
    cores = os.cpu_count() or 1
    if cfg.pool.workers and cfg.pool.workers > cores * 4:
        issues.append(
            Issue("warning", "pool.workers", f"{cfg.pool.workers} workers on {cores} cores")
        )
    return issues


def main(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)
    issues = [
        *check_regexes(policy),
        *check_callables(policy, confirm_findings=not args.no_confirm),
        *check_settings(policy),
    ]
    dangers = sum(i.level == "danger" for i in issues)
    warnings = sum(i.level == "warning" for i in issues)
    if args.json:
        print(
            msgspec.json.encode(
                {"issues": [asdict(i) for i in issues], "dangers": dangers, "warnings": warnings}
            ).decode()
        )
    else:
        for issue in issues:
            print(f"{issue.level:8} {issue.where}: {issue.message}")
        print(
            f"{len(policy.guards)} guards, {len(policy.limits)} limits: "
            f"{dangers} dangerous, {warnings} warnings"
        )
    return 1 if dangers else 0
