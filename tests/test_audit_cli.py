"""``guardpool audit show|summary|verify`` as a user runs it: a subprocess, exit codes 0/1/2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from guardpool.audit import AuditEvent, Ledger


def audit(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", "audit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "guardpool.db"
    with Ledger(path) as ledger:
        ledger.append([AuditEvent(kind="policy_load", reason="policy.toml")])
        ledger.append(
            [
                AuditEvent(kind="check", run_id="r1", labels=("exe:llm:gpt-4o",), decision_id="d1"),
                AuditEvent(kind="reserve", run_id="r1", usage={"exe:llm:*:cost": 2500}),
                AuditEvent(kind="verdict", run_id="r1", guard="no-keys", outcome="allow"),
                AuditEvent(kind="decision", run_id="r1", outcome="allow"),
            ]
        )
        ledger.append([AuditEvent(kind="settle", run_id="r1", usage={"tokens": 7, "cost": 1200})])
        ledger.append(
            [
                AuditEvent(kind="check", run_id="r2", labels=("op:cmd:git",)),
                AuditEvent(kind="timeout", run_id="r2", guard="slow", outcome="timeout"),
                AuditEvent(kind="decision", run_id="r2", outcome="deny", reason="slow timed out"),
            ]
        )
    return path


def test_show_prints_an_aligned_table_of_the_run(db: Path) -> None:
    r = audit(db.parent, "show", "r1", "--db", str(db))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "SEQ",
        "TIME",
        "KIND",
        "GUARD",
        "OUTCOME",
        "REASON",
        "LABELS",
        "USAGE",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["2", "3", "4", "5", "6"]
    kind_col = lines[0].index("KIND")
    assert [line[kind_col:].split()[0] for line in lines[1:]] == [
        "check",
        "reserve",
        "verdict",
        "decision",
        "settle",
    ]
    assert "exe:llm:gpt-4o" in lines[1] and "no-keys" in lines[3]
    assert "cost=$0.0012 tokens=7" in lines[5] and "exe:llm:*:cost=$0.0025" in lines[2]


def test_show_json_has_every_field(db: Path) -> None:
    r = audit(db.parent, "show", "r2", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    events = json.loads(r.stdout)
    assert [e["event"]["kind"] for e in events] == ["check", "timeout", "decision"]
    assert events[2]["event"]["reason"] == "slow timed out" and len(events[2]["hash"]) == 64


def test_show_of_an_unknown_run_is_bad_input(db: Path) -> None:
    r = audit(db.parent, "show", "nope", "--db", str(db))
    assert r.returncode == 2 and "no events for run 'nope'" in r.stderr


def test_summary_text_and_json(db: Path) -> None:
    r = audit(db.parent, "summary", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert "9 in 2 run(s)" in r.stdout
    assert "1 allowed (0 with warnings), 1 denied" in r.stdout
    assert "slow timed out" in r.stdout and "slow: timeout 1" in r.stdout
    assert "cost=$0.0012" in r.stdout
    j = audit(db.parent, "summary", "--db", str(db), "--run", "r2", "--json")
    assert j.returncode == 0, j.stderr
    s = json.loads(j.stdout)
    assert (s["events"], s["decisions_denied"], s["timeouts"]) == (3, 1, 1)


def test_verify_ok_prints_the_head_to_pin(db: Path) -> None:
    r = audit(db.parent, "verify", "--db", str(db))
    assert r.returncode == 0, r.stderr
    with Ledger(db) as ledger:
        head = ledger.verify().head_hash
    assert r.stdout.splitlines() == ["ok: 9 events, chain intact", f"head: seq 9 sha256 {head}"]
    pinned = audit(db.parent, "verify", "--db", str(db), "--expect-head", head)
    assert pinned.returncode == 0, pinned.stderr
    wrong = audit(db.parent, "verify", "--db", str(db), "--expect-head", "f" * 64)
    assert wrong.returncode == 1 and "pinned head" in wrong.stdout


def test_verify_of_a_tampered_ledger_exits_1_naming_the_event(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute(
        "UPDATE audit_events SET payload = replace(payload, 'deny', 'allow') WHERE seq = 9"
    )
    conn.close()
    r = audit(db.parent, "verify", "--db", str(db))
    assert r.returncode == 1
    assert r.stdout.startswith("BROKEN at event 9: hash mismatch")
    j = audit(db.parent, "verify", "--db", str(db), "--json")
    assert j.returncode == 1 and json.loads(j.stdout)["first_bad_seq"] == 9


def test_db_defaults_to_guardpool_db_in_the_current_directory(db: Path) -> None:
    r = audit(db.parent, "verify")
    assert r.returncode == 0 and r.stdout.startswith("ok: 9 events")


@pytest.mark.parametrize("content", [None, b"not a database at all", b""])
def test_missing_or_foreign_file_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "x.db"
    if content is not None:
        path.write_bytes(content)
    for action in (["verify"], ["summary"], ["show", "r1"]):
        r = audit(tmp_path, *action, "--db", str(path))
        assert r.returncode == 2, (action, r.stdout, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith("guardpool audit: error: ")
    # Opening read-only must not have turned the file into a ledger.
    assert path.exists() == (content is not None)
