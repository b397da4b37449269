"""Colour only where it belongs: NO_COLOR is honoured, pipes get plain text."""

from __future__ import annotations

import os
import re
import subprocess
import sys

COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;)[0-9;]*m")
ANY_ESCAPE = re.compile(r"\x1b\[")


def _demo(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "FORCE_COLOR"}}
    done = subprocess.run(
        [sys.executable, "-m", "guardpool", "demo"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_demo_output_into_a_pipe_has_no_escape_codes() -> None:
    assert not ANY_ESCAPE.search(_demo())


def test_no_color_wins_even_where_colour_is_forced() -> None:
    forced = _demo(FORCE_COLOR="1")
    assert COLOUR.search(forced), (
        "FORCE_COLOR should colour the demo (else this test proves nothing)"
    )
    assert not COLOUR.search(_demo(FORCE_COLOR="1", NO_COLOR="1"))
