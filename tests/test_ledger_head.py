"""The ledger's cached chain head (audit/ledger.py): never trusted past what the file holds.

A Ledger links a batch to the head it last committed without reading it back.
These tests make that head stale in every way it can be (another process,
another Ledger on the file, a joint transaction that rolls back) and check
that the chain stays one valid chain, in append order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guardpool.audit import AuditEvent, Ledger
from guardpool.audit.events import GENESIS_HASH
from guardpool.runner.audit_sink import AuditSink
from guardpool.runner.hooks import HookBus
from guardpool.store.errors import StoreUnavailable
from guardpool.store.sqlite import Joint, SqliteStore

# A process that appends one batch of 3 events for each line it reads on stdin
# (run_id = its name, detail.batch = the line), answering "ok" once committed.
APPENDER = r"""
import sys
from guardpool.audit import AuditEvent, Ledger

ledger = Ledger(sys.argv[1])
for line in sys.stdin:
    batch = line.strip()
    ledger.append([AuditEvent(kind="check", run_id=sys.argv[2], detail={"batch": batch})] * 3)
    print("ok", flush=True)
ledger.close()
"""


def batch(name: str, n: object) -> list[AuditEvent]:
    return [AuditEvent(kind="check", run_id=name, detail={"batch": str(n)})] * 3


def order(ledger: Ledger) -> list[tuple[str, str]]:
    """(run_id, batch) of every event in chain order."""
    return [(s.event.run_id, s.event.detail["batch"]) for s in ledger.events()]


class Appender:
    """A second real process appending to the same file, one batch per ask."""

    def __init__(self, path: Path, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def append(self, n: object) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def test_another_process_appending_between_two_batches_keeps_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    other = Appender(path, "other")
    try:
        with Ledger(path) as ledger:
            ledger.append(batch("here", 0))  # this process caches its head now
            other.append(0)  # ... which is stale from here on
            other.append(1)
            ledger.append(batch("here", 1))  # must link after the other process's events
            ledger.append(batch("here", 2))  # and its own head is fresh again
            other.append(2)
            ledger.append(batch("here", 3))
            report = ledger.verify()
            assert report.ok, report.reason
            assert report.checked == 7 * 3
            got = order(ledger)
    finally:
        other.close()
    expected = [("here", "0"), ("other", "0"), ("other", "1"), ("here", "1"), ("here", "2")]
    expected += [("other", "2"), ("here", "3")]
    assert got == [e for e in expected for _ in range(3)]


def test_two_ledgers_of_one_process_on_one_file_alternate(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with Ledger(path) as a, Ledger(path) as b:
        for i in range(20):
            a.append(batch("a", i))
            b.append(batch("b", i))
            if i % 3 == 0:
                b.append(batch("b", f"{i}+"))
        report = a.verify()
        assert report.ok, report.reason
        assert report.checked == (40 + 7) * 3
        assert b.verify().head_hash == report.head_hash


def test_a_joint_transaction_that_rolls_back_leaves_the_cached_head_alone(
    tmp_path: Path,
) -> None:
    # The store and the ledger share the file (the enforcer's default): events appended
    # inside the store's transaction are linked, then the transaction rolls back. Had the
    # ledger taken their head as its own, its next batch would leave a gap in seq.
    path = tmp_path / "guardpool.db"
    store = SqliteStore(path)
    ledger = Ledger(path)
    sink = AuditSink(ledger, HookBus(), fail_closed=True)
    try:
        ledger.append(batch("r", "first"))

        def fails(j: Joint) -> None:
            sink.append_in(j, batch("r", "rolled back"))
            raise RuntimeError("the step failed after the append")

        with pytest.raises(RuntimeError):
            store.joint(fails)

        def commits(j: Joint) -> None:
            sink.append_in(j, batch("r", "joint"))

        store.joint(commits)
        ledger.append(batch("r", "after"))
        report = ledger.verify()
        assert report.ok, report.reason
        assert [b for _, b in order(ledger)][::3] == ["first", "joint", "after"]
    finally:
        store.close()
        ledger.close()


def test_a_store_failure_inside_the_joint_step_rolls_back_both(tmp_path: Path) -> None:
    # sqlite3 errors inside the step surface as StoreUnavailable (rolled back).
    path = tmp_path / "guardpool.db"
    store = SqliteStore(path)
    ledger = Ledger(path)
    sink = AuditSink(ledger, HookBus(), fail_closed=True)
    try:

        def broken(j: Joint) -> None:
            sink.append_in(j, batch("r", "lost"))
            j.conn.execute("INSERT INTO no_such_table VALUES (1)")

        with pytest.raises(StoreUnavailable):
            store.joint(broken)
        ledger.append(batch("r", "kept"))
        report = ledger.verify()
        assert report.ok and report.checked == 3
        first = ledger.events()[0]
        assert first.seq == 1 and first.prev_hash == GENESIS_HASH
    finally:
        store.close()
        ledger.close()
