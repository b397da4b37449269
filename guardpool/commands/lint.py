"""``guardpool lint``: compile a policy and flag what an attacker could exploit.

Data flow: the policy file -> ``load_policy``. If it loads: its RE2 banks
(semantic differences, program sizes), its callable guards' modules
(``analysis.modcheck``: ReDoS in ``re``/``regex`` patterns, timed against the
real engine) and its settings. If it does not: the loader's error (GP001),
then the raw file is read again so that every other refused pattern (GP002)
and every guard module is still checked — all problems in one run.

Every issue has a rule code (``analysis.rules``), a place (``path:line:col``
or a config key), a message and a fix hint. Exit 2 when the policy is bad
input, else 1 when there are dangers, else 0; ``--json`` prints one JSON
document in every case, also on a config error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from guardpool.analysis.modcheck import check_modules
from guardpool.analysis.rules import RULES, Issue, issue
from guardpool.policy.bounds import MAX_WORKERS
from guardpool.policy.errors import PolicyError
from guardpool.policy.labels import match
from guardpool.policy.loader import Policy, load_policy
from guardpool.policy.machine import advice
from guardpool.policy.regex import compile_pattern, re_semantic_warnings

_LONG_PRIVILEGED_MS = 5000
_MAX_DEADLINE_S = 3600
# A confirmation's child spends up to ~0.15 s starting and a slow size runs 0.3 s
# before it stops: below this, nothing is ever confirmed (`--deadline 1e-6` turned
# the planted ReDoS dangers, exit 1, into "suspected", exit 0).
_MIN_DEADLINE_S = 1.0
_HUGE_INPUT = 16 << 20
EXIT_OK, EXIT_FOUND, EXIT_BAD_INPUT = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument(
        "--json", action="store_true", help="one JSON document on stdout (also on errors)"
    )
    parser.add_argument(
        "--no-confirm",
        action="store_true",
        help="report static ReDoS findings as dangers without timing them against Python re "
        "(faster; may include false alarms)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="CPU-time budget for confirming one finding (default 3, at least 1)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, MAX_WORKERS),
        metavar="N",
        help="confirmations run in parallel (default: cores)",
    )


def check_regexes(policy: Policy) -> list[Issue]:
    issues = []
    for name, guard in policy.guards.items():
        for key, bank in guard.banks.items():
            for i, (pattern, size) in enumerate(
                zip(bank.patterns, bank.program_sizes(), strict=True)
            ):
                where = f"guard {name} {key}[{i}]"
                issues.append(issue("GP302", where, f"RE2 program size {size}"))
                issues.extend(issue("GP301", where, w) for w in re_semantic_warnings(pattern))
    return issues


def check_settings(policy: Policy) -> list[Issue]:
    cfg = policy.config
    issues = []
    for name, g in policy.guards.items():
        spec = g.spec
        for field in ("on_timeout", "on_error"):
            if getattr(spec, field) == "allow":
                issues.append(
                    issue(
                        "GP201",
                        f"guard {name}",
                        f'{field} = "allow": this guard fails open (allowed, audited as warn)',
                    )
                )
        if spec.privileged and (spec.timeout_ms or 0) > _LONG_PRIVILEGED_MS:
            issues.append(
                issue(
                    "GP202",
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
                issue(
                    "GP203",
                    f'limits."{limit.pattern}"',
                    f"no [estimates] or [prices] for {', '.join(needs)}: operations without their "
                    f"own estimate fall back to the {limit.margin:.0%} safety margin",
                )
            )
    if cfg.pool.max_input_bytes > _HUGE_INPUT:
        issues.append(
            issue(
                "GP204",
                "pool.max_input_bytes",
                f"{cfg.pool.max_input_bytes} bytes: every guard must handle this",
            )
        )
    # Machine-aware advice is computed in one place (policy/machine.py); lint only shows it.
    issues.extend(issue(a.code, a.key, a.message) for a in advice(cfg))
    return issues


def _raw(path: Path) -> dict[str, Any] | None:
    """The policy file as plain data, when it parses at all."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None  # the loader's own error (GP001) says what is wrong with it
    return data if isinstance(data, dict) else None


def _raw_guards(data: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    guards = data.get("guard", [])
    if not isinstance(guards, list):
        return []
    return [(i, g) for i, g in enumerate(guards) if isinstance(g, dict)]


def check_broken(path: Path, error: PolicyError) -> tuple[list[Issue], list[str]]:
    """What can still be checked in a policy that does not load: the other
    refused patterns, and the modules its guards name."""
    where = ": ".join(p for p in (error.file, error.key) if p) or str(path)
    issues = [issue("GP001", where, error.reason)]
    data = _raw(path)
    if data is None:
        return issues, []
    defaults = data.get("guards", {})
    max_mem = defaults.get("regex_max_mem") if isinstance(defaults, dict) else None
    modules: list[str] = []
    for i, g in _raw_guards(data):
        for bank in ("deny_regex", "require_regex"):
            patterns = g.get(bank, [])
            for j, pattern in enumerate(patterns if isinstance(patterns, list) else []):
                key = f"guard[{i}].{bank}[{j}]"
                if key == error.key or not isinstance(pattern, str):
                    continue
                try:
                    if isinstance(max_mem, int) and max_mem > 0:
                        compile_pattern(pattern, max_mem)
                    else:
                        compile_pattern(pattern)
                except ValueError as exc:
                    issues.append(issue("GP002", f"{path}: {key}", str(exc)))
        call = g.get("call")
        if isinstance(call, str) and ":" in call:
            modules.append(call.partition(":")[0])
    # Guard modules resolve beside the policy file and its parent, as the loader does.
    base = path.resolve().parent
    for entry in (str(base.parent), str(base)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return issues, modules


def _report(issues: list[Issue], as_json: bool, summary: dict[str, Any]) -> None:
    counts = {level: sum(i.level == level for i in issues) for level in _LEVELS}
    if as_json:
        doc = {"issues": issues, **summary}
        doc |= {_PLURAL[k]: v for k, v in counts.items()}
        doc["rules"] = {i.code: RULES[i.code].title for i in issues}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
        return
    for level in _LEVELS:
        group = [i for i in issues if i.level == level]
        if not group:
            continue
        if level == "suspected":
            print("-- suspected (not confirmed by timing; does not fail lint):")
        for i in group:
            print(f"{i.where}: {i.code} {i.level}: {i.message}")
            if level in ("error", "danger", "suspected"):
                print(f"    hint: {i.hint}")
    parts = [f"{v} {_PLURAL[k] if v != 1 else k}" for k, v in counts.items() if v]
    print(
        f"{summary['guards']} guards, {summary['limits']} limits: " + (", ".join(parts) or "clean")
    )


_LEVELS = ("error", "danger", "suspected", "warning", "info")
_PLURAL = {"error": "errors", "danger": "dangers", "suspected": "suspected"}
_PLURAL |= {"warning": "warnings", "info": "infos"}


def main(args: argparse.Namespace) -> int:
    path = Path(args.config)
    confirm = not args.no_confirm
    # `not min <= x <= max` also refuses NaN; an infinite deadline never kills a confirmation.
    # Each flag's message names that flag only (one message for both named --jobs when
    # only --deadline was wrong).
    message = ""
    if not _MIN_DEADLINE_S <= args.deadline <= _MAX_DEADLINE_S:
        message = (
            f"--deadline must be at least {_MIN_DEADLINE_S:g} and at most {_MAX_DEADLINE_S} "
            f"seconds (given {args.deadline}); a shorter deadline confirms nothing, so every "
            "danger would pass as merely suspected"
        )
    elif not 1 <= args.jobs <= MAX_WORKERS:
        message = f"--jobs must be between 1 and {MAX_WORKERS} (given {args.jobs})"
    if message:
        _report([issue("GP001", "command line", message)], args.json, {"guards": 0, "limits": 0})
        if not args.json:
            print(f"guardpool lint: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        issues, modules = check_broken(path, exc)
        issues += check_modules(
            modules, confirm=confirm, parallel=args.jobs, deadline_s=args.deadline
        )
        _report(issues, args.json, {"guards": 0, "limits": 0})
        if not args.json:
            print(f"guardpool lint: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    modules = sorted({g.spec.call.partition(":")[0] for g in policy.guards.values() if g.spec.call})
    issues = [
        *check_regexes(policy),
        *check_modules(modules, confirm=confirm, parallel=args.jobs, deadline_s=args.deadline),
        *check_settings(policy),
    ]
    _report(issues, args.json, {"guards": len(policy.guards), "limits": len(policy.limits)})
    return EXIT_FOUND if any(i.level == "danger" for i in issues) else EXIT_OK
