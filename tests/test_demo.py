"""``guardpool demo`` tells the whole story, as ``make demo`` runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_every_step_as_told(tmp_path: Path) -> None:
    # Run from an unrelated directory: the demo must not depend on the cwd.
    out = subprocess.run(
        [sys.executable, "-m", "guardpool", "demo", "--no-color"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(out.stdout.split())  # rich may wrap long lines
    for line in (
        "two LLM calls and `git status` allowed",
        "the key never reaches the model",
        "RE2 answered the attack input without backtracking",
        "still running after 2 s, killed",
        "denied at the deadline",
        "allowed with a warning, and audited",
        "the next estimate ($0.0075) did not fit, so the call never ran",
        "chain: intact",
    ):
        assert line in text, line
    assert "UNEXPECTED" not in text and "Traceback" not in out.stderr
