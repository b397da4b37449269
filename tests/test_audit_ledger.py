"""The audit ledger on real SQLite files: chain, tampering, concurrency, crashes, failures."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from guardpool.audit import AuditEvent, Ledger, LedgerError, LedgerWriteError
from guardpool.audit.chain import encode_event, linked_rows
from guardpool.audit.events import GENESIS_HASH
from guardpool.audit.ledger import canonical_bytes, chain_hash

# A child process that appends `batches` batches of 5 events tagged with its name
# and prints each batch number once the append returned (i.e. committed).
APPENDER = r"""
import sys
from guardpool.audit import AuditEvent, Ledger

path, name, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
ledger = Ledger(path)
i = 0
while batches < 0 or i < batches:
    ledger.append(
        [AuditEvent(kind="check", run_id=name, detail={"batch": i, "n": n}) for n in range(5)]
    )
    print(i, flush=True)
    i += 1
ledger.close()
"""


def ev(kind: str = "check", run_id: str = "r", **fields: Any) -> AuditEvent:
    return AuditEvent(kind=kind, run_id=run_id, **fields)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "guardpool.db"


@pytest.fixture
def ledger(db: Path) -> Iterator[Ledger]:
    led = Ledger(db)
    yield led
    led.close()


def fill(ledger: Ledger, n: int) -> None:
    """n events in batches of 5, alternating outcomes so payloads differ."""
    for start in range(0, n, 5):
        ledger.append(
            [
                ev("decision", outcome="allow" if i % 2 else "deny", reason=f"#{i}")
                for i in range(start, min(start + 5, n))
            ]
        )


def raw(db: Path) -> sqlite3.Connection:
    """What an attacker with write access to the file uses: plain sqlite, triggers dropped."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute("DROP TRIGGER audit_events_no_delete")
    return conn


# -- the chain -----------------------------------------------------------------


def test_chain_verifies_after_many_appends(ledger: Ledger) -> None:
    fill(ledger, 1000)
    report = ledger.verify()
    assert report.ok and report.checked == 1000 and report.first_bad_seq is None
    stored = ledger.events()
    assert [s.seq for s in stored] == list(range(1, 1001))
    assert stored[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(stored))
    assert (report.head_seq, report.head_hash) == (1000, stored[-1].hash)


def test_empty_ledger_verifies(ledger: Ledger) -> None:
    report = ledger.verify()
    assert report.ok and report.checked == 0 and report.head_hash == GENESIS_HASH


def test_a_batch_is_one_transaction_with_one_timestamp(ledger: Ledger) -> None:
    ledger.append([ev("check"), ev("reserve"), ev("decision")])
    stored = ledger.events()
    assert [s.event.kind for s in stored] == ["check", "reserve", "decision"]
    assert len({s.ts for s in stored}) == 1


def test_the_hash_is_sha256_of_prev_and_the_canonical_event(ledger: Ledger) -> None:
    ledger.append([ev("check", labels=("exe:llm",), detail={"b": 1, "a": 2})])
    (s,) = ledger.events()
    canonical = (
        '{"event":{"detail":{"a":2,"b":1},"kind":"check","labels":["exe:llm"],"run_id":"r"},'
        f'"seq":1,"ts":{s.ts}}}'
    )
    assert s.hash == hashlib.sha256((GENESIS_HASH + canonical).encode()).hexdigest()


def test_canonical_bytes_are_the_sorted_json_encoding_byte_for_byte() -> None:
    """The ledger frames each payload by hand; it must equal the generic encoding."""
    payload = msgspec.json.encode({"kind": "check", "reason": 'caf\u00e9 \U0001f600 "q"'})
    for seq, ts in ((1, 0), (10**6, 1_764_000_000_000), (2**63 - 1, 2**63 - 1), (7, -5)):
        generic = msgspec.json.encode(
            {"event": msgspec.Raw(payload), "seq": seq, "ts": ts}, order="sorted"
        )
        assert canonical_bytes(seq, ts, payload) == generic


def test_linked_rows_are_chain_hash_applied_event_after_event() -> None:
    """The rows hash the stored text encoded back to UTF-8: the payload's own bytes,
    non-ASCII and escaped quotes included."""
    events = [
        AuditEvent(kind="check", run_id="r1"),
        AuditEvent(kind="verdict", run_id="r1", reason='caf\u00e9 \U0001f600 "q" \\ \n'),
        AuditEvent(kind="decision", run_id="", labels=("exe:llm",)),
    ]
    payloads = [encode_event(ev) for ev in events]
    ts = 1_764_000_000_123
    params, seq, head = linked_rows("ab" * 32, 41, ts, events, payloads)
    assert len(params) == 7 * len(events)
    prev = "ab" * 32
    for n, (ev, payload) in enumerate(zip(events, payloads, strict=True)):
        row = params[7 * n : 7 * n + 7]
        digest = chain_hash(prev, 42 + n, ts, payload)
        assert row == [42 + n, ts, ev.kind, ev.run_id, payload.decode(), prev, digest]
        prev = digest
    assert (seq, head) == (44, prev)
    assert linked_rows("cd" * 32, 7, ts, [], []) == ([], 7, "cd" * 32)


def test_triggers_refuse_update_and_delete(ledger: Ledger, db: Path) -> None:
    fill(ledger, 3)
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_events SET kind = 'check' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit_events WHERE seq = 3")
    conn.close()
    assert ledger.verify().ok


# -- tampering -------------------------------------------------------------------


def test_edited_payload_is_found_at_its_seq(ledger: Ledger, db: Path) -> None:
    fill(ledger, 20)
    conn = raw(db)
    conn.execute(
        "UPDATE audit_events SET payload = replace(payload, 'deny', 'allow') WHERE seq = 7"
    )
    conn.close()
    report = ledger.verify()
    assert not report.ok
    assert report.first_bad_seq == 7 and "hash mismatch" in report.reason
    assert report.checked == 6 and report.head_seq == 6


def test_edited_time_is_found(ledger: Ledger, db: Path) -> None:
    fill(ledger, 10)
    conn = raw(db)
    conn.execute("UPDATE audit_events SET ts = ts - 1000 WHERE seq = 4")
    conn.close()
    assert ledger.verify().first_bad_seq == 4


def test_edited_index_column_is_found(ledger: Ledger, db: Path) -> None:
    # Moving an event to another run in the index would hide it from `audit show`.
    fill(ledger, 10)
    conn = raw(db)
    conn.execute("UPDATE audit_events SET run_id = 'elsewhere' WHERE seq = 5")
    conn.close()
    report = ledger.verify()
    assert report.first_bad_seq == 5 and "disagree" in report.reason


def test_deleted_row_is_found(ledger: Ledger, db: Path) -> None:
    fill(ledger, 10)
    conn = raw(db)
    conn.execute("DELETE FROM audit_events WHERE seq = 5")
    conn.close()
    report = ledger.verify()
    assert not report.ok and report.first_bad_seq == 5 and "missing" in report.reason


def test_deleted_first_row_is_found(ledger: Ledger, db: Path) -> None:
    fill(ledger, 5)
    conn = raw(db)
    conn.execute("DELETE FROM audit_events WHERE seq = 1")
    conn.close()
    assert ledger.verify().first_bad_seq == 1


def test_swapped_rows_are_found(ledger: Ledger, db: Path) -> None:
    fill(ledger, 10)
    conn = raw(db)
    conn.execute("UPDATE audit_events SET seq = -3 WHERE seq = 3")
    conn.execute("UPDATE audit_events SET seq = 3 WHERE seq = 4")
    conn.execute("UPDATE audit_events SET seq = 4 WHERE seq = -3")
    conn.close()
    report = ledger.verify()
    assert not report.ok and report.first_bad_seq == 3


def test_inserted_row_is_found_at_the_next_link(ledger: Ledger, db: Path) -> None:
    fill(ledger, 20)
    ten = ledger.events()[9]
    conn = raw(db)
    # Make room after seq 10, then insert a forged event chained correctly to 10.
    conn.execute("UPDATE audit_events SET seq = seq + 1000 WHERE seq > 10")
    conn.execute("UPDATE audit_events SET seq = seq - 999 WHERE seq > 1000")
    payload = '{"kind":"decision","outcome":"allow","run_id":"r"}'
    forged = chain_hash(ten.hash, 11, ten.ts, payload.encode())
    conn.execute(
        "INSERT INTO audit_events VALUES (11, ?, 'decision', 'r', ?, ?, ?)",
        (ten.ts, payload, ten.hash, forged),
    )
    conn.close()
    report = ledger.verify()
    assert not report.ok and report.first_bad_seq == 12 and "prev_hash" in report.reason


def test_a_pinned_head_catches_a_cut_tail(ledger: Ledger, db: Path) -> None:
    fill(ledger, 10)
    pin = ledger.verify().head_hash
    fill(ledger, 5)
    assert ledger.verify(expect_head=pin).ok
    conn = raw(db)
    # Cutting the tail leaves a valid (shorter) chain: only the pin notices.
    conn.execute("DELETE FROM audit_events WHERE seq > 9")
    conn.close()
    assert ledger.verify().ok
    report = ledger.verify(expect_head=pin)
    assert not report.ok and report.first_bad_seq is None and "pinned head" in report.reason


# -- concurrency and crashes -----------------------------------------------------


def test_four_processes_appending_keep_one_chain(db: Path) -> None:
    # No ledger yet: the processes also race to create the file and its tables.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(db), f"p{i}", "100"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with Ledger(db) as ledger:
        report = ledger.verify()
        assert report.ok and report.checked == 4 * 100 * 5
        seqs: dict[tuple[str, int], list[int]] = defaultdict(list)
        for s in ledger.events():
            seqs[(s.event.run_id, s.event.detail["batch"])].append(s.seq)
    assert len(seqs) == 400
    # Each batch is one transaction: its five events are adjacent in the chain.
    assert all(v == list(range(v[0], v[0] + 5)) for v in seqs.values())


def test_threads_sharing_one_ledger_keep_one_chain(ledger: Ledger) -> None:
    def work(name: str) -> None:
        for i in range(50):
            ledger.append([ev(run_id=name, detail={"i": i}) for _ in range(3)])
            ledger.events(run_id=name, limit=1)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = ledger.verify()
    assert report.ok and report.checked == 4 * 50 * 3
    assert all(len(ledger.events(run_id=f"t{i}")) == 150 for i in range(4))


def test_kill_9_mid_append_leaves_a_valid_chain(db: Path) -> None:
    Ledger(db).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(db), "victim", "-1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    printed = [proc.stdout.readline() for _ in range(30)]
    assert printed[-1].strip() == "29"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    # Through the same buffered reader: lines it already buffered count too.
    rest = proc.stdout.read()
    proc.stdout.close()
    last_reported = int([*printed, *rest.splitlines()][-1])
    with Ledger(db) as ledger:
        assert ledger.verify().ok
        batches: dict[int, int] = defaultdict(int)
        for s in ledger.events(run_id="victim"):
            batches[s.event.detail["batch"]] += 1
    # Every reported batch is there in full; at most one more committed unreported.
    assert max(batches) in (last_reported, last_reported + 1)
    assert sorted(batches) == list(range(max(batches) + 1))
    assert set(batches.values()) == {5}
    # The reopened ledger keeps extending the same chain.
    with Ledger(db) as ledger:
        ledger.append([ev()])
        assert ledger.verify().ok


# -- failures ------------------------------------------------------------------------


def test_path_in_a_missing_directory_is_a_write_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerWriteError, match="cannot open audit ledger"):
        Ledger(tmp_path / "no-such-dir" / "guardpool.db")


def test_a_directory_is_a_write_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerWriteError):
        Ledger(tmp_path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file unwritable even for root (immutable flag), or skip if we cannot."""
    os.chmod(path, 0o444)
    immutable = False
    if os.geteuid() == 0:
        r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if r.returncode != 0:
            pytest.skip("running as root and cannot set the immutable flag")
        immutable = True
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        os.chmod(path, 0o644)


def test_read_only_file_is_a_write_error(db: Path) -> None:
    with Ledger(db) as ledger:
        fill(ledger, 5)
    with read_only(db), pytest.raises(LedgerWriteError, match="readonly"):
        led = Ledger(db)
        try:
            led.append([ev()])
        finally:
            led.close()
    with Ledger(db) as ledger:
        assert ledger.verify().checked == 5


def test_append_after_close_is_a_write_error(db: Path) -> None:
    led = Ledger(db)
    led.close()
    with pytest.raises(LedgerWriteError, match="closed"):
        led.append([ev()])


def test_unencodable_detail_is_a_write_error_and_writes_nothing(ledger: Ledger) -> None:
    with pytest.raises(LedgerWriteError, match="encoded"):
        ledger.append([ev(), ev(detail={"x": object()})])
    assert ledger.events() == []


def test_unknown_kind_is_a_programming_error(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="unknown audit event kind"):
        ledger.append([ev("oops")])


def test_shares_a_file_with_other_tables(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE budget_counters (key TEXT PRIMARY KEY, used INTEGER)")
    conn.execute("INSERT INTO budget_counters VALUES ('k', 3)")
    conn.commit()
    conn.close()
    with Ledger(db) as ledger:
        fill(ledger, 5)
        assert ledger.verify().ok
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT used FROM budget_counters").fetchone() == (3,)
    conn.close()


def test_opening_a_non_ledger_without_create_changes_nothing(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE other (x)")
    conn.close()
    with pytest.raises(LedgerError, match="not a guardpool audit ledger"):
        Ledger(db, create=False)
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"other"}


def test_opening_a_missing_file_without_create_does_not_create_it(db: Path) -> None:
    with pytest.raises(LedgerError, match="no such file"):
        Ledger(db, create=False)
    assert not db.exists()


# -- inputs --------------------------------------------------------------------------


def test_inputs_are_hash_and_length_only_by_default(ledger: Ledger) -> None:
    fields = ledger.input_fields("héllo")
    assert fields == {
        "input_sha256": hashlib.sha256("héllo".encode()).hexdigest(),
        "input_len": 6,
    }
    ledger.append([ev(**fields)])
    (s,) = ledger.events()
    assert s.event.input is None and s.event.input_len == 6


def test_captured_inputs_keep_the_text(db: Path) -> None:
    with Ledger(db, capture_input=True) as ledger:
        assert ledger.input_fields("héllo")["input"] == "héllo"
        assert ledger.input_fields(b"\xffok")["input"] == "\\xffok"
        ledger.append([ev(**ledger.input_fields({"b": 1, "a": [2]}))])
        (s,) = ledger.events()
    assert s.event.input == '{"a":[2],"b":1}'
    assert s.event.input_sha256 == hashlib.sha256(b'{"a":[2],"b":1}').hexdigest()


def test_json_inputs_hash_the_same_whatever_the_key_order(ledger: Ledger) -> None:
    assert ledger.input_fields({"a": 1, "b": 2}) == ledger.input_fields({"b": 2, "a": 1})
    assert ledger.input_fields(b"abc") == ledger.input_fields("abc")


# -- reading -------------------------------------------------------------------------


def test_events_filter_by_run_kinds_and_limit(ledger: Ledger) -> None:
    ledger.append([ev("check", "a"), ev("verdict", "a"), ev("decision", "a")])
    ledger.append([ev("check", "b"), ev("decision", "b")])
    assert [s.event.kind for s in ledger.events("a")] == ["check", "verdict", "decision"]
    assert [s.seq for s in ledger.events(kinds=["decision"])] == [3, 5]
    assert [s.seq for s in ledger.events("b", kinds=["check", "decision"], limit=1)] == [4]
    assert ledger.events(kinds=[]) == []


def test_summary_counts(ledger: Ledger) -> None:
    ledger.append(
        [
            ev("check", "a"),
            ev("verdict", "a", guard="no-keys", outcome="allow"),
            ev("timeout", "a", guard="slow", outcome="timeout"),
            ev("decision", "a", outcome="deny", reason="guard slow timed out"),
            ev("check", "b"),
            ev("crash", "b", guard="boom", outcome="error"),
            ev("decision", "b", outcome="warn", reason="near limit"),
            ev("settle", "b", usage={"tokens": 5, "cost": 100}),
            ev("decision", "b", outcome="allow"),
            ev("expire", "", usage={"tokens": 3}),
        ]
    )
    s = ledger.summary()
    assert (s.events, s.runs) == (10, 2)
    assert s.by_kind["decision"] == 3 and s.by_kind["check"] == 2
    assert (s.decisions_allowed, s.decisions_warned, s.decisions_denied) == (2, 1, 1)
    assert s.denials_by_reason == {"guard slow timed out": 1}
    assert s.guard_outcomes == {
        "no-keys": {"allow": 1},
        "slow": {"timeout": 1},
        "boom": {"error": 1},
    }
    assert (s.timeouts, s.crashes) == (1, 1)
    assert s.usage == {"cost": 100, "tokens": 8}
    b = ledger.summary("b")
    assert (b.events, b.runs, b.decisions_denied, b.usage) == (
        5,
        1,
        0,
        {"cost": 100, "tokens": 5},
    )
