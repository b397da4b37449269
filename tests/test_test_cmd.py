"""``guardpool test``: written-down expectations run through a real enforcer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "guardpool.toml"


def guardpool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_example_policy_meets_its_cases() -> None:
    out = guardpool("test", "--config", str(EXAMPLE), "examples/cases.toml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("12 passed, 0 failed")


def test_a_failing_case_prints_its_diff_and_exits_1(tmp_path: Path) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text(
        "# two cases, the second wrong on purpose\n"
        '[[case]]\nname = "ok"\nlabels = ["op:cmd:ls"]\ninput = "ls"\nexpect = "allow"\n\n'
        '[[case]]\nname = "wrongly expected allow"\nlabels = ["op:cmd:ls"]\n'
        'input = "ls; rm -rf /"\nexpect = "allow"\n'
        'guards = { "shell" = "allow", "toxicity" = "allow" }\nreasons = ["nope"]\n'
    )
    out = guardpool("test", "--config", str(EXAMPLE), str(cases))
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert f"FAIL {cases}:8 wrongly expected allow" in text  # file:line of its [[case]]
    assert "  - action: allow\n  + action: deny" in text
    assert "  - guard shell: allow\n  + guard shell: deny" in text
    assert "  - guard toxicity: allow\n  + guard toxicity: not-run" in text
    assert "  - reason containing: 'nope'" in text
    assert "recursive delete" in text
    assert text.strip().endswith("1 passed, 1 failed")
    assert "FAIL" not in text.split("wrongly")[0].replace(f"FAIL {cases}:8 ", "")


def test_json_output_and_json_cases(tmp_path: Path) -> None:
    cases = tmp_path / "cases.json"
    cases.write_text(
        json.dumps(
            [
                {
                    "name": "key denied",
                    "labels": ["exe:llm:gpt-4o"],
                    "input": "AKIAABCDEFGHIJKLMNOP",
                    "expect": "deny",
                    "guards": {"no-cloud-keys": "deny"},
                }
            ]
        )
    )
    out = guardpool("test", "--config", str(EXAMPLE), str(cases), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["passed"] == 1 and report["failed"] == 0
    (case,) = report["files"][0]["cases"]
    assert case["decision"]["guards"]["no-cloud-keys"] == "deny"


def test_bad_cases_exit_2_naming_what_is_wrong(tmp_path: Path) -> None:
    bad = {
        "unknown key": ('[[case]]\nname = "x"\nlabels = ["a"]\nexpect = "allow"\nexpected = 1\n',
                        "expected"),
        "unknown guard": ('[[case]]\nname = "x"\nlabels = ["a"]\nexpect = "allow"\n'
                          'guards = { "nosuch" = "deny" }\n', "no guard named 'nosuch'"),
        "bad label": ('[[case]]\nname = "x"\nlabels = ["a b"]\nexpect = "allow"\n', "labels"),
        "bad action": ('[[case]]\nname = "x"\nlabels = ["a"]\nexpect = "maybe"\n', "case[1]"),
        "bad usage": ('[[case]]\nname = "x"\nlabels = ["a"]\nexpect = "allow"\n'
                      "usage = { tokens = -1 }\n", "usage"),
        "not toml": ("[[case]\n", "invalid TOML"),
        "empty": ("", "no cases"),
    }
    for what, (text, needle) in bad.items():
        cases = tmp_path / "cases.toml"
        cases.write_text(text)
        out = guardpool("test", "--config", str(EXAMPLE), str(cases))
        assert out.returncode == 2, (what, out.stdout, out.stderr)
        assert needle in out.stderr, (what, out.stderr)
        assert "Traceback" not in out.stderr
    out = guardpool("test", "--config", str(EXAMPLE), str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "cannot read" in out.stderr
