"""``guardpool fuzz`` and ``guardpool bench`` through the real pool, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def guardpool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fuzz_finds_the_planted_redos_guard_and_writes_reproducers(tmp_path: Path) -> None:
    out = guardpool(
        "fuzz",
        "--config",
        "tests/planted/policy.toml",
        "--seconds",
        "4",
        "--guard",
        "trailing",
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 1, out.stdout + out.stderr
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert records, out.stdout
    first = records[0]
    assert first["guard"] == "trailing" and first["outcome"] == "timeout"
    assert first["input"]["text"].startswith("aaaa")  # a pumping string, not luck
    assert "guardpool check --config" in first["replay"]


def test_fuzz_passes_regex_banks_and_checks_them_against_re(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[[guard]]\nname = \"keys\"\ndeny_regex = ['AKIA[0-9A-Z]{16}', '(a+)+$']\n"
        f'[store]\npath = "{tmp_path / "g.db"}"\n[audit]\npath = "{tmp_path / "g.db"}"\n'
    )
    out = guardpool("fuzz", "--config", str(policy), "--seconds", "3", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no guard timed out" in out.stdout
    assert not list(tmp_path.glob("*.json"))


def test_fuzz_rejects_an_unknown_guard() -> None:
    out = guardpool("fuzz", "--config", "tests/planted/policy.toml", "--guard", "nope")
    assert out.returncode == 2 and "no guard named nope" in out.stderr


def test_bench_prints_a_toml_snippet_that_parses(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[[guard]]\nname = \"keys\"\ndeny_regex = ['AKIA[0-9A-Z]{16}']\n"
        '[[guard]]\nname = "hangs"\ncall = "tests.enforcer_guards:hang"\n'
        f'[store]\npath = "{tmp_path / "g.db"}"\n[audit]\npath = "{tmp_path / "g.db"}"\n'
    )
    out = guardpool("bench", "--config", str(policy), "--seconds", "2")
    assert out.returncode == 0, out.stderr
    assert "hangs" in out.stdout and "this guard hangs" in out.stdout
    snippet = out.stdout[out.stdout.index("# recommended by guardpool bench") :]
    parsed = tomllib.loads(snippet)
    assert parsed["pool"]["job_timeout_ms"] >= 50
    assert parsed["pool"]["memory_mb"] >= 128
