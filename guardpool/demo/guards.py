"""The demo's callable guards (run in sandboxed worker processes)."""

from __future__ import annotations

import shlex
import time
from typing import Any

from guardpool.policy.verdict import Verdict


def check_shell(command: Any, ctx: Any) -> Verdict:
    """Deny recursive deletes of / or ~ and download-and-execute pipelines."""
    text = str(command)
    if "| sh" in text or "| bash" in text:
        return Verdict.deny("piping a download into a shell")
    argv = shlex.split(text)
    if (
        argv[:1] == ["rm"]
        and any("r" in a for a in argv if a.startswith("-"))
        and any(a in ("/", "~", "/*") for a in argv)
    ):
        return Verdict.deny("recursive delete of / or ~")
    return Verdict.allow()


def unresponsive_service(url: Any, ctx: Any) -> bool:
    """A URL-reputation service that has stopped answering."""
    time.sleep(30)
    return True


def slow_classifier(text: Any, ctx: Any) -> Verdict:
    """An advisory classifier that is slow on long inputs (fail-open in the policy)."""
    if len(str(text)) > 2000:
        time.sleep(5)
    return Verdict.allow()
