"""The ledger writes no event it could not read back: one depth bound for writer and readers.

msgspec encodes a few levels deeper than it decodes, and decodes only as deep as
Python's recursion limit less the reader's stack. Every writer (SQLite, PostgreSQL)
refuses an event nesting deeper than ``MAX_EVENT_DEPTH``, failing closed like any
other write error; an event of exactly that depth is read back by ``guardpool
audit verify`` and ``show`` (real processes) and by both ledgers' readers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guardpool.audit.chain import event_depth, nesting_depth
from guardpool.audit.events import MAX_EVENT_DEPTH, AuditEvent
from guardpool.audit.ledger import Ledger, LedgerWriteError
from guardpool.audit.pg_ledger import PgLedger

ROOT = Path(__file__).resolve().parent.parent


def nested(depth: int) -> dict[str, Any]:
    """A ``detail`` making the whole event exactly ``depth`` levels deep."""
    inner: Any = "leaf"
    for _ in range(depth - 2):  # the event object and detail itself are two levels
        inner = [inner]
    return {"x": inner}


def event(depth: int, **fields: Any) -> AuditEvent:
    return AuditEvent(kind="check", run_id="r", detail=nested(depth), **fields)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_depth_is_counted_as_json_nests() -> None:
    assert nesting_depth("x", 10) == 0
    assert nesting_depth({}, 10) == 1
    assert nesting_depth({"a": [1, {"b": ()}]}, 10) == 4
    assert event_depth(AuditEvent(kind="check")) == 2
    assert event_depth(event(MAX_EVENT_DEPTH)) == MAX_EVENT_DEPTH
    cycle: list[Any] = []
    cycle.append(cycle)
    assert nesting_depth(cycle, 50) == 51  # stops counting past the limit


def test_the_deepest_event_allowed_is_written_and_read_back_by_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with Ledger(db) as ledger:
        ledger.append([event(MAX_EVENT_DEPTH, reason="deepest")])
        assert ledger.events("r")[0].event.reason == "deepest"
    show = cli("audit", "show", "r", "--db", str(db))
    assert show.returncode == 0 and "Traceback" not in show.stderr, show.stderr
    verify = cli("audit", "verify", "--db", str(db))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("depth", [MAX_EVENT_DEPTH + 1, 990, 100_000])
def test_a_deeper_event_is_refused_and_nothing_of_its_batch_is_written(
    tmp_path: Path, depth: int
) -> None:
    db = tmp_path / "a.db"
    with Ledger(db) as ledger:
        ledger.append([AuditEvent(kind="check", run_id="r", reason="before")])
        with pytest.raises(LedgerWriteError) as info:
            ledger.append([AuditEvent(kind="check", run_id="r"), event(depth)])
        assert f"nests more than {MAX_EVENT_DEPTH} levels deep" in str(info.value)
        assert "could not read it back" in str(info.value)
        assert [s.event.reason for s in ledger.events()] == ["before"]
        assert ledger.verify().ok
    verify = cli("audit", "verify", "--db", str(db))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_postgres_ledger_checks_the_same_bound(postgres_url: str, pg_schema: str) -> None:
    with PgLedger(postgres_url, schema=pg_schema, chain="h") as ledger:
        ledger.append([event(MAX_EVENT_DEPTH, reason="deepest")])
        with pytest.raises(LedgerWriteError, match=f"more than {MAX_EVENT_DEPTH} levels"):
            ledger.append([event(MAX_EVENT_DEPTH + 1)])
        assert [e.stored.event.reason for e in ledger.events("r")] == ["deepest"]
        assert ledger.verify().ok


def test_a_detail_of_scalars_is_depth_two_like_the_walk_says() -> None:
    flat = AuditEvent(kind="verdict", detail={"effect": "allow", "cpu_ms": 0.5, "n": 3, "x": None})
    assert event_depth(flat) == 2 == 1 + nesting_depth(flat.detail, MAX_EVENT_DEPTH)
    nested = AuditEvent(kind="verdict", detail={"effect": "allow", "job": {"signal": 9}})
    assert event_depth(nested) == 3 == 1 + nesting_depth(nested.detail, MAX_EVENT_DEPTH)
