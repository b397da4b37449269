"""Example callable guards: ``(input, ctx) -> Verdict | bool``.

Guard code is trusted (the policy author wrote it); its *input* is hostile.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from guardpool import Verdict

_DANGEROUS_COMMANDS = {"mkfs", "dd", "shutdown", "reboot", "chmod", "chown"}
_PIPE_TO_SHELL = ("| sh", "| bash", "|sh", "|bash")


def check_shell(command: Any, ctx: Any) -> Verdict:
    """Deny destructive or download-and-execute shell commands."""
    text = str(command)
    if any(p in text for p in _PIPE_TO_SHELL):
        return Verdict.deny("piping a download into a shell")
    try:
        argv = shlex.split(text)
    except ValueError:
        return Verdict.deny("unparsable shell command")
    if not argv:
        return Verdict.deny("empty command")
    if (
        argv[0] == "rm"
        and any(a.startswith("-") and "r" in a for a in argv[1:])
        and any(a in ("/", "~", "/*", ".") for a in argv[1:])
    ):
        return Verdict.deny("recursive delete of a root or home directory")
    if argv[0] in _DANGEROUS_COMMANDS:
        return Verdict.deny(f"{argv[0]} is not allowed for agents")
    if argv[0] == "git" and argv[1:3] == ["push", "--force"]:
        return Verdict.warn("force push")
    # Nested guard: the command line must not carry credentials either.
    nested: Verdict = ctx.guard("no-cloud-keys", text)
    return nested


def slow_lookup(value: Any, ctx: Any) -> bool:
    """Simulates a reputation service that has stopped answering."""
    time.sleep(30)
    return True


def toxicity_score(value: Any, ctx: Any) -> Verdict:
    """An advisory classifier: slow on long inputs, fail-open in the policy."""
    text = str(value)
    if len(text) > 10_000:
        time.sleep(5)  # pretend the model is slow on long inputs
    if ctx.regex(r"(?i)\b(idiot|stupid)\b").search(text):
        return Verdict.warn("possibly toxic language")
    return Verdict.allow()


def redact_emails(value: Any, ctx: Any) -> Verdict:
    """After-guard: rewrite e-mail addresses in model output."""
    text = str(value)
    pattern = ctx.regex(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
    if pattern.search(text):
        return Verdict.rewrite(pattern.sub("[email]", text), "e-mail address redacted")
    return Verdict.allow()
