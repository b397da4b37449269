"""The PostgreSQL audit ledger on a real server: per-host chains, fleet-wide verify and
show, append-only enforced by the database, tampering found and located."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

from guardpool import Enforcer, Operation
from guardpool.audit.events import AuditEvent
from guardpool.audit.ledger import LedgerError, LedgerWriteError
from guardpool.audit.pg_ledger import PgLedger, chain_genesis

from .conftest import PG_PASSWORD, PostgresServer, free_port

ROOT = Path(__file__).resolve().parent.parent

# One host of a fleet: appends n batches of 3 events for run "shared" and its own run.
HOST = textwrap.dedent(
    """
    import sys
    from guardpool.audit.events import AuditEvent
    from guardpool.audit.pg_ledger import PgLedger
    url, schema, host, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with PgLedger(url, schema=schema, chain=host) as ledger:
        for i in range(n):
            ledger.append([
                AuditEvent(kind="check", run_id="shared", reason=f"{host} {i}"),
                AuditEvent(kind="decision", run_id="shared", outcome="allow"),
                AuditEvent(kind="check", run_id=f"own-{host}"),
            ])
    """
)


@pytest.fixture
def ledger(postgres_url: str, pg_schema: str) -> Iterator[PgLedger]:
    with PgLedger(postgres_url, schema=pg_schema, chain="host-a") as led:
        yield led


def owner(server: PostgresServer) -> psycopg.Connection[tuple[object, ...]]:
    """The database's owner (the role that created the tables), autocommit."""
    return psycopg.connect(server.url, autocommit=True)


def superuser(server: PostgresServer) -> psycopg.Connection[tuple[object, ...]]:
    url = server.admin_url.replace("/postgres?", "/guardpool?")
    return psycopg.connect(url, autocommit=True)


def test_four_hosts_append_to_their_own_chains_and_all_verify(
    postgres_url: str, pg_schema: str
) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", HOST, postgres_url, pg_schema, f"host-{h}", "25"])
        for h in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=240) == 0
    with PgLedger(postgres_url, schema=pg_schema, create=False) as led:
        report = led.verify()
        assert report.ok
        assert [(c.chain, c.report.checked) for c in report.chains] == [
            (f"host-{h}", 75) for h in range(4)
        ]
        shared = led.events(run_id="shared")
        assert len(shared) == 4 * 50
        assert {e.chain for e in shared} == {f"host-{h}" for h in range(4)}
        # Within a chain, seq orders the events; every host's came in append order.
        for h in range(4):
            reasons = [e.stored.event.reason for e in shared if e.chain == f"host-{h}"]
            assert [r for r in reasons if r] == [f"host-{h} {i}" for i in range(25)]


def test_a_chain_starts_from_its_own_genesis(ledger: PgLedger) -> None:
    ledger.append([AuditEvent(kind="check", run_id="r")])
    (ev,) = ledger.events()
    assert ev.chain == "host-a"
    assert ev.stored.prev_hash == chain_genesis("host-a") != chain_genesis("host-b")


def test_one_chain_per_run(postgres_url: str, pg_schema: str) -> None:
    with PgLedger(postgres_url, schema=pg_schema, chain="run") as led:
        led.append([AuditEvent(kind="check", run_id="r1"), AuditEvent(kind="check", run_id="r2")])
        led.append([AuditEvent(kind="decision", run_id="r1", outcome="deny")])
        report = led.verify()
    assert report.ok
    assert [(c.chain, c.report.checked) for c in report.chains] == [("r1", 2), ("r2", 1)]


def test_update_delete_and_truncate_are_refused_even_for_the_owner(
    postgres_server: PostgresServer, ledger: PgLedger, pg_schema: str
) -> None:
    ledger.append([AuditEvent(kind="check", run_id="r")])
    with owner(postgres_server) as conn:
        for statement in (
            f"UPDATE {pg_schema}.audit_events SET reason = 'x'",
            f"DELETE FROM {pg_schema}.audit_events",
            f"TRUNCATE {pg_schema}.audit_events",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement.replace("SET reason = 'x'", "SET kind = 'x'"))
    assert ledger.verify().ok


def test_a_writing_role_may_only_read_and_append(
    postgres_server: PostgresServer, postgres_url: str, ledger: PgLedger, pg_schema: str
) -> None:
    with superuser(postgres_server) as conn:
        conn.execute(f"CREATE ROLE writer_{pg_schema} LOGIN PASSWORD '{PG_PASSWORD}'")
    ledger.grant_writer(f"writer_{pg_schema}")
    url = postgres_url.replace("guardpool@", f"writer_{pg_schema}@")
    with PgLedger(url, schema=pg_schema, chain="host-w") as writer:
        writer.append([AuditEvent(kind="check", run_id="w")])
        assert writer.verify().ok
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in (
            f"UPDATE {pg_schema}.audit_events SET kind = 'x'",
            f"DELETE FROM {pg_schema}.audit_events",
            f"TRUNCATE {pg_schema}.audit_events",
            f"ALTER TABLE {pg_schema}.audit_events DISABLE TRIGGER USER",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def tamper(server: PostgresServer, schema: str, sql: str) -> None:
    """What an administrator can still do: lift the triggers, change rows, put them back."""
    with superuser(server) as conn, conn.transaction():
        conn.execute(f"ALTER TABLE {schema}.audit_events DISABLE TRIGGER USER")
        conn.execute(sql.format(t=f"{schema}.audit_events"))
        conn.execute(f"ALTER TABLE {schema}.audit_events ENABLE TRIGGER USER")


def three_chains(url: str, schema: str) -> None:
    for host in ("host-a", "host-b", "host-c"):
        with PgLedger(url, schema=schema, chain=host) as led:
            for i in range(5):
                led.append([AuditEvent(kind="check", run_id=f"{host}-{i}")])


def test_an_edited_event_fails_verify_naming_the_chain_and_event(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    three_chains(postgres_url, pg_schema)
    tamper(
        postgres_server,
        pg_schema,
        "UPDATE {t} SET payload = replace(payload, 'check', 'settle') "
        "WHERE chain = 'host-b' AND seq = 3",
    )
    with PgLedger(postgres_url, schema=pg_schema, create=False) as led:
        report = led.verify()
    assert not report.ok
    broken = [c for c in report.chains if not c.report.ok]
    assert [(c.chain, c.report.first_bad_seq) for c in broken] == [("host-b", 3)]
    assert "hash mismatch" in broken[0].report.reason
    assert all(c.report.ok for c in report.chains if c.chain != "host-b")


def test_a_deleted_event_and_a_moved_chain_fail_verify(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    three_chains(postgres_url, pg_schema)
    tamper(postgres_server, pg_schema, "DELETE FROM {t} WHERE chain = 'host-a' AND seq = 2")
    tamper(postgres_server, pg_schema, "UPDATE {t} SET chain = 'host-z' WHERE chain = 'host-c'")
    with PgLedger(postgres_url, schema=pg_schema, create=False) as led:
        report = led.verify()
    bad = {c.chain: c.report for c in report.chains if not c.report.ok}
    assert set(bad) == {"host-a", "host-z"}
    assert bad["host-a"].first_bad_seq == 2 and "missing" in bad["host-a"].reason
    assert bad["host-z"].first_bad_seq == 1  # the genesis binds the chain's name


def test_a_consistent_rewrite_is_caught_by_a_pinned_head(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    three_chains(postgres_url, pg_schema)
    with PgLedger(postgres_url, schema=pg_schema, create=False) as led:
        heads = {c.chain: c.report.head_hash for c in led.verify().chains}
    # The administrator cuts host-c's last two events: what is left still verifies.
    tamper(postgres_server, pg_schema, "DELETE FROM {t} WHERE chain = 'host-c' AND seq > 3")
    with PgLedger(postgres_url, schema=pg_schema, create=False) as led:
        assert led.verify().ok
        report = led.verify(expect_heads=heads)
    bad = [c for c in report.chains if not c.report.ok]
    assert [c.chain for c in bad] == ["host-c"]
    assert "pinned head" in bad[0].report.reason


def test_the_cli_verifies_every_chain_and_shows_a_run_across_hosts(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    for host in ("host-a", "host-b"):
        with PgLedger(postgres_url, schema=pg_schema, chain=host) as led:
            led.append([AuditEvent(kind="check", run_id="fleet-run", reason=host)])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "guardpool", "audit", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )

    ok = cli("verify", "--url", postgres_url, "--schema", pg_schema)
    assert ok.returncode == 0, ok.stderr
    assert "2 chains" in ok.stdout and "host-a" in ok.stdout and "host-b" in ok.stdout
    shown = cli("show", "fleet-run", "--url", postgres_url, "--schema", pg_schema, "--json")
    assert shown.returncode == 0, shown.stderr
    assert sorted(e["chain"] for e in json.loads(shown.stdout)) == ["host-a", "host-b"]
    tamper(postgres_server, pg_schema, "UPDATE {t} SET ts = ts + 1 WHERE chain = 'host-b'")
    broken = cli("verify", "--url", postgres_url, "--schema", pg_schema)
    assert broken.returncode == 1
    assert "BROKEN chain host-b at event 1" in broken.stdout
    pinned = cli(
        "verify", "--url", postgres_url, "--schema", pg_schema, "--expect-head", "nonsense"
    )
    assert pinned.returncode == 2 and "CHAIN=HASH" in pinned.stderr
    missing = cli("verify", "--url", postgres_url, "--schema", "no_such_schema")
    assert missing.returncode == 2 and "no guardpool audit ledger" in missing.stderr


def test_the_enforcer_writes_to_the_postgres_ledger(postgres_url: str, pg_schema: str) -> None:
    cfg = {
        "limits": {"exe:llm:*": {"calls": 1}},
        "store": {"backend": "memory"},
        "audit": {"backend": "postgres", "url": postgres_url, "schema": pg_schema, "chain": "h1"},
    }
    with Enforcer.from_config(cfg) as e:
        run = e.run("enf-run")
        assert run.check(Operation(labels=("exe:llm:x",), input="a")).allowed
        assert not run.check(Operation(labels=("exe:llm:x",), input="b")).allowed
        summary = e.ledger.summary("enf-run")
    assert summary.decisions_allowed == 1 and summary.decisions_denied == 1
    with PgLedger(postgres_url, schema=pg_schema, create=False) as led:
        assert led.verify().ok
        assert {ev.chain for ev in led.events(run_id="enf-run")} == {"h1"}


def test_an_unreachable_ledger_fails_closed(pg_schema: str) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    with pytest.raises(LedgerWriteError):
        PgLedger(url, schema=pg_schema, op_timeout_ms=300)
    with pytest.raises(LedgerError):
        PgLedger(url, schema=pg_schema, op_timeout_ms=300, create=False)


def test_a_ledger_killed_mid_run_denies_then_recovers(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    cfg = {
        "store": {"backend": "memory"},
        "audit": {
            "backend": "postgres",
            "url": postgres_url,
            "schema": pg_schema,
            "op_timeout_ms": 300,
        },
    }
    op = Operation(labels=("exe:llm:x",), input="a")
    with Enforcer.from_config(cfg) as e:
        run = e.run("r")
        assert run.check(op).allowed
        postgres_server.stop()
        try:
            down = run.check(op)
            assert not down.allowed
            assert "audit ledger unavailable" in down.reasons[-1]
        finally:
            postgres_server.start()
        import time

        deadline = time.monotonic() + 30
        while not run.check(op).allowed:
            assert time.monotonic() < deadline
            time.sleep(0.1)
