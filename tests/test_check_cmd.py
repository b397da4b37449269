"""``guardpool check`` from the shell: exit codes 0/1/2, text and JSON, stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(
        '[[guard]]\nname = "keys"\nops = ["*"]\ndeny_regex = [\'AKIA[0-9A-Z]{16}\']\n'
        'reason = "credential in outbound data"\n'
        '[[guard]]\nname = "shell"\nops = ["op:cmd:*"]\n'
        'call = "tests.enforcer_guards:deny_secrets"\n'
        '[limits."exe:llm:*"]\ncost = "$1.00"\n'
        f'[store]\npath = "{tmp_path / "g.db"}"\n[audit]\npath = "{tmp_path / "g.db"}"\n'
    )
    return p


def check(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", "check", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_allowed_is_exit_0_with_a_readable_decision(policy: Path) -> None:
    out = check("--config", str(policy), "--label", "op:cmd:git:status", "--input", "git status")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert text.startswith("ALLOW") and "guard shell" in text and "guard keys" in text


def test_denied_is_exit_1_and_json_is_a_decision(policy: Path) -> None:
    out = check(
        "--config",
        str(policy),
        "--label",
        "op:cmd:cat",
        "--input",
        "-",
        "--json",
        stdin=b"the secret",
    )
    assert out.returncode == 1
    decision = json.loads(out.stdout)
    assert decision["allowed"] is False and decision["action"] == "deny"
    assert decision["verdicts"][1]["guard"] == "shell"


def test_an_estimate_over_the_budget_is_denied(policy: Path) -> None:
    out = check(
        "--config",
        str(policy),
        "--label",
        "exe:llm:gpt-4o",
        "--input",
        "hi",
        "--estimate-cost",
        "$5.00",
    )
    assert out.returncode == 1 and b"would exceed $1.00" in out.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--label", "bad label", "--input", "x"], None, b"bad label"),
        (["--label", "op:x", "--input", "-"], b"caf\xe9", b"not UTF-8"),
        (["--label", "op:x", "--input", "x", "--estimate-cost", "lots"], None, b"bad money"),
        (["--label", "op:x", "--input", "x", "--estimate-tokens", "-3"], None, b">= 0"),
    ],
)
def test_bad_input_is_exit_2_without_a_traceback(
    policy: Path, args: list[str], stdin: bytes | None, message: bytes
) -> None:
    out = check("--config", str(policy), *args, stdin=stdin)
    assert out.returncode == 2
    assert message in out.stderr and b"Traceback" not in out.stderr


def test_a_missing_or_broken_config_is_exit_2(tmp_path: Path) -> None:
    out = check("--config", str(tmp_path / "nope.toml"), "--label", "x", "--input", "x")
    assert out.returncode == 2 and b"no such file" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool]\nworkers = 'two'\n")
    out = check("--config", str(bad), "--label", "x", "--input", "x")
    assert out.returncode == 2 and b"pool.workers" in out.stderr and b"Traceback" not in out.stderr
