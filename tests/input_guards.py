"""Callable guards for the input-contract tests (imported in real worker processes)."""

from __future__ import annotations

from typing import Any

from guardpool import Verdict
from guardpool.policy import inputs


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_texts(k), *_texts(v))]
    return []


def deny_lone_surrogate(value: Any, ctx: Any) -> Verdict:
    """Denies text holding U+D800: it can only judge what it is shown."""
    if any("\ud800" in t for t in _texts(value)):
        return Verdict.deny("a lone surrogate U+D800 in the input")
    return Verdict.allow()


def report_digest(value: Any, ctx: Any) -> Verdict:
    """Warns with the sha256 of the bytes it saw (and their size), per the contract."""
    return Verdict.warn(f"saw {inputs.input_size(value)} bytes sha256 {inputs.input_digest(value)}")


def quote(value: Any, ctx: Any) -> Verdict:
    """Denies, quoting the input in its reason (hostile text in a reason)."""
    return Verdict.deny(f"refused {value}")


def shout(value: Any, ctx: Any) -> Verdict:
    """Rewrites the text (hostile text in a rewrite)."""
    return Verdict.rewrite(str(value).upper())


def allow(value: Any, ctx: Any) -> Verdict:
    return Verdict.allow()


def words_only(value: Any, ctx: Any) -> Verdict:
    """Uses ctx.regex (RE2) on the text, lone surrogates and all."""
    if ctx.regex(r"^[\w ]*$").search(value) is None:
        return Verdict.deny("not only words")
    return Verdict.allow()
