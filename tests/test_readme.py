"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_pool_example() -> None:
    assert any("GuardPool(" in b and ".submit(" in b for b in _blocks())


def test_readme_pool_example_runs_as_written() -> None:
    block = next(b for b in _blocks() if "GuardPool(" in b and ".submit(" in b)
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'ok {"a": 1}', done.stdout
