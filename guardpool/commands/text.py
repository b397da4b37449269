"""Stored or hostile text made safe to print on a terminal.

The ledger holds text that came from outside: a guard's reason may quote the
input it judged, an approver's name comes from an HTTP client. Printed as it
is, an ESC byte starts a terminal control sequence (clear the screen, retitle
the window, hide the rest of the line) and a bidirectional override reorders
what the reader sees. ``printable`` writes every such character as its Python
escape (``\\x1b``, ``\\u202e``), so a table shows what is stored and nothing
else; ``--json`` output needs none of this (JSON escapes control characters).
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with every non-printable character but the space escaped."""
    if text.isprintable():
        return text  # the common case, one C loop
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in text
    )
