"""ReDoS analysis and ``guardpool lint``, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guardpool.analysis.astscan import scan_source
from guardpool.analysis.redos import analyse, confirm

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        (r"(a+)+$", "nested-quantifier"),
        (r"(a*)*b", "nested-quantifier"),
        (r"^(\w+\s?)*$", "nested-quantifier"),
        (r"(a|aa)+$", "overlapping-alternation"),
        (r"\w+\d+$", "adjacent-overlap"),
        (r".*.*=", "adjacent-overlap"),
    ],
)
def test_dangerous_shapes_are_found(pattern: str, kind: str) -> None:
    assert kind in {f.kind for f in analyse(pattern)}


@pytest.mark.parametrize(
    "pattern", [r"^[a-z]+$", r"AKIA[0-9A-Z]{16}", r"(ab|cd)+$", r"(ab|a)*c", r"^(\d+)-(\d+)$"]
)
def test_safe_patterns_are_left_alone(pattern: str) -> None:
    assert analyse(pattern) == []


def test_an_exponential_finding_is_confirmed_against_real_re() -> None:
    (finding,) = analyse(r"(a+)+$")
    result = confirm(r"(a+)+$", finding, cap_s=0.3)
    assert result.confirmed and result.attack.startswith("aaaa") and result.attack[-1] == "!"


def test_the_ast_scan_finds_literal_patterns_only() -> None:
    source = (
        "import re\n"
        "X = re.compile(r'(a+)+')\n"
        "def f(s, p):\n"
        "    return re.search(p, s) or re.match('ok', s)\n"
    )
    uses = scan_source(source, "m.py")
    assert [(u.line, u.call, u.pattern) for u in uses] == [
        (2, "re.compile", "(a+)+"),
        (4, "re.match", "ok"),
    ]


def lint(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", "lint", "--config", str(config), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lint_flags_the_planted_guard_module() -> None:
    out = lint(ROOT / "tests" / "planted" / "policy.toml")
    assert out.returncode == 1, out.stderr
    assert "bad_guards.py:8" in out.stdout and "bad_guards.py:16" in out.stdout
    assert "confirmed" in out.stdout and "aaaaaaaa" in out.stdout
    assert "bad_guards.py:20" not in out.stdout  # the safe pattern


def test_lint_passes_the_example_policy_with_warnings_only() -> None:
    out = lint(ROOT / "examples" / "guardpool.toml", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["dangers"] == 0
    assert any("fails open" in i["message"] for i in report["issues"])


def test_lint_on_a_broken_policy_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[guard]]\nname = "x"\ndeny_regex = ["(?=x)"]\n')
    out = lint(bad)
    assert out.returncode == 2
    assert "guard[0].deny_regex[0]" in out.stderr and "Traceback" not in out.stderr
