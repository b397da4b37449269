"""Callable guards used by the integration tests (imported in real worker processes)."""

from __future__ import annotations

from typing import Any

from guardpool import Verdict


def warn_force_push(value: Any, ctx: Any) -> Verdict:
    """A policy *warning*: a force-push is allowed, but someone should look first."""
    if "--force" in str(value):
        return Verdict.warn("force-push rewrites shared history")
    return Verdict.allow()


def no_rm_rf(value: Any, ctx: Any) -> Verdict | bool:
    if "rm -rf" in str(value):
        return Verdict.deny("recursive delete")
    return True


def upper(value: Any, ctx: Any) -> Verdict:
    return Verdict.rewrite(str(value).upper())


def ask_deploy(value: Any, ctx: Any) -> Verdict:
    """A question for a human: deploys are fine, once someone says so."""
    if "deploy" in str(value):
        return Verdict.ask("deploys need a human's approval")
    return Verdict.allow()


def redact_passwords(value: Any, ctx: Any) -> Verdict:
    """A rewrite that keeps the value's shape (strings inside dicts and lists too)."""

    def scrub(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("password", "********")
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [scrub(x) for x in v]
        return v

    return Verdict.rewrite(scrub(value))
