"""Many hosts, one PostgreSQL: exact budgets under races, fail closed on outage, recovery.

Every test runs against a real server started by ``conftest.postgres_server``;
each uses a schema of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import psycopg.errors
import pytest

from guardpool import Enforcer, Operation, PolicyError
from guardpool.store.base import ReserveItem
from guardpool.store.errors import StoreUnavailable
from guardpool.store.postgres import PostgresStore

from .conftest import PostgresServer, free_port

ROOT = Path(__file__).resolve().parent.parent

# One host: n reserves of $0.25 against a $10 global budget (or 1 call against a
# rolling limit of 25). A reserve the store could not answer is sent again with
# the same id until it is answered, as a host would: the store is idempotent by
# reservation id, so a reply lost in a crash cannot count twice.
RACER = textwrap.dedent(
    """
    import json, sys, time
    from types import SimpleNamespace
    from guardpool.store.postgres import PostgresStore
    from guardpool.store.base import ReserveItem
    from guardpool.store.errors import StoreUnavailable
    url, schema, name, n, kind, mode, pause = sys.argv[1:8]
    store = PostgresStore(
        SimpleNamespace(url=url, key_prefix=schema, connect_timeout_ms=2000,
                        op_timeout_ms=int(sys.argv[8])),
        serializable=(mode == "serializable"),
    )
    if kind == "cost":
        items = [ReserveItem(key="team|global", dimension="cost", limit=10_000_000,
                             amount=250_000)]
    else:
        items = [ReserveItem(key="team|calls", dimension="calls", limit=25, amount=1,
                             window_ms=60_000)]

    def answered(step):
        failures = []
        while True:
            start = time.monotonic()
            try:
                return step(), failures
            except StoreUnavailable:
                failures.append(time.monotonic() - start)
                time.sleep(0.05)

    granted, failed = 0, []
    for i in range(int(n)):
        rid = f"{name}-{i}"
        result, f = answered(lambda: store.reserve(rid, items, 60_000))
        failed += f
        if result.ok:
            granted += 1
            _, f = answered(lambda: store.settle(rid, {}))
            failed += f
        time.sleep(float(pause))
    print(json.dumps({"granted": granted, "failed": failed}))
    """
)


def settings(url: str, schema: str, timeout_ms: int = 300) -> Any:
    return SimpleNamespace(
        url=url, key_prefix=schema, connect_timeout_ms=timeout_ms, op_timeout_ms=timeout_ms
    )


def start_racers(
    url: str,
    schema: str,
    kind: str,
    *,
    hosts: int = 4,
    n: int = 60,
    mode: str = "rows",
    pause: float = 0.0,
    timeout_ms: int = 5000,
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                url,
                schema,
                f"h{h}",
                str(n),
                kind,
                mode,
                str(pause),
                str(timeout_ms),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for h in range(hosts)
    ]


def collect(procs: list[subprocess.Popen[str]]) -> tuple[int, list[float]]:
    granted, failed = 0, []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0
        report = json.loads(out)
        granted += report["granted"]
        failed += report["failed"]
    return granted, failed


def counter(server: PostgresServer, schema: str, key: str) -> tuple[int, int]:
    """(used, reserved) read over the superuser's socket; zeros before the tables exist."""
    with psycopg.connect(server.admin_url.replace("/postgres?", "/guardpool?")) as conn:
        try:
            row = conn.execute(
                f"SELECT used, reserved FROM {schema}.budget_counters WHERE key = %s", (key,)
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return (0, 0)
    return (int(row[0]), int(row[1])) if row else (0, 0)


def test_four_hosts_race_for_ten_dollars_in_quarter_steps(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    granted, _ = collect(start_racers(postgres_url, pg_schema, "cost"))
    assert granted == 40
    assert counter(postgres_server, pg_schema, "team|global") == (10_000_000, 0)


def test_four_hosts_race_for_calls_in_a_rolling_window(postgres_url: str, pg_schema: str) -> None:
    granted, _ = collect(start_racers(postgres_url, pg_schema, "calls", n=20))
    assert granted == 25


def test_serializable_mode_is_exact_too(postgres_url: str, pg_schema: str) -> None:
    # The mode bench/bench_pg_locking.py compares against row locks: slower, not wrong.
    granted, _ = collect(start_racers(postgres_url, pg_schema, "cost", mode="serializable"))
    assert granted == 40


def test_a_server_killed_mid_run_denies_in_time_and_the_budget_stays_exact(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    procs = start_racers(postgres_url, pg_schema, "cost", pause=0.02, timeout_ms=300)
    try:
        deadline = time.monotonic() + 60
        while counter(postgres_server, pg_schema, "team|global")[0] < 2_000_000:
            assert time.monotonic() < deadline, "the racers never got going"
            time.sleep(0.02)
        postgres_server.stop()  # SIGKILL to the postmaster and every backend
        time.sleep(1.0)
    finally:
        postgres_server.start()
    granted, failed = collect(procs)
    assert failed, "no step failed: the server was not killed mid-run"
    # Generous bound: each failed step gave up near op_timeout_ms (300 ms), none hung.
    assert max(failed) < 3.0
    # Retried with the same ids after the restart: nothing granted twice, nothing lost.
    assert granted == 40
    assert counter(postgres_server, pg_schema, "team|global") == (10_000_000, 0)


def test_an_outage_denies_within_the_timeout_and_the_same_enforcer_recovers(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    cfg = {
        "limits": {"exe:llm:*": {"calls": 100, "scope": "global"}},
        "store": {
            "backend": "postgres",
            "url": postgres_url,
            "key_prefix": pg_schema,
            "connect_timeout_ms": 250,
            "op_timeout_ms": 250,
        },
        "audit": {"path": str(tmp_path / "audit.db")},
    }
    op = Operation(labels=("exe:llm:x",), input="hi")
    with Enforcer.from_config(cfg) as e:
        run = e.run("outage")
        assert run.check(op).allowed
        postgres_server.stop()
        try:
            start = time.monotonic()
            down = run.check(op)
            assert time.monotonic() - start < 3.0
            assert not down.allowed
            assert down.reasons[0].startswith("budget store unavailable")
        finally:
            postgres_server.start()
        deadline = time.monotonic() + 30
        while not run.check(op).allowed:  # the pool reconnects in the background
            assert time.monotonic() < deadline, "the enforcer never recovered"
            time.sleep(0.1)


def test_counters_survive_a_server_crash_and_restart(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    store = PostgresStore(settings(postgres_url, pg_schema, 2000))
    item = ReserveItem(key="k", dimension="tokens", limit=1000, amount=300)
    assert store.reserve("a", [item], 60_000).ok
    assert store.settle("a", {"tokens": 250}).ok
    assert store.reserve("b", [item], 60_000).ok
    postgres_server.stop()
    with pytest.raises(StoreUnavailable):
        store.states([item])
    postgres_server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            s = store.states([item])[0]
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (s.used, s.reserved) == (250, 300)
    assert store.settle("b", {"tokens": 100}).ok
    assert store.states([item])[0].used == 350
    store.close()


def test_a_hung_server_is_unavailable_within_the_timeout(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    store = PostgresStore(settings(postgres_url, pg_schema, 300))
    item = ReserveItem(key="k", dimension="calls", limit=10, amount=1)
    assert store.reserve("a", [item], 60_000).ok
    postgres_server.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.reserve("b", [item], 60_000)
        assert time.monotonic() - start < 3.0
    finally:
        postgres_server.resume()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert store.reserve("b", [item], 60_000).ok
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert store.states([item])[0].reserved == 2
    store.close()


def test_an_unreachable_server_is_unavailable_not_an_allow(pg_schema: str) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    store = PostgresStore(settings(url, pg_schema, 200))
    with pytest.raises(StoreUnavailable, match="budget store unavailable: postgres"):
        store.reserve("a", [ReserveItem(key="k", dimension="calls", limit=5, amount=1)], 1000)
    store.close()


def test_a_crashed_hosts_reservation_expires_and_is_charged(
    postgres_url: str, pg_schema: str
) -> None:
    crasher = textwrap.dedent(
        """
        import os, sys
        from types import SimpleNamespace
        from guardpool.store.postgres import PostgresStore
        from guardpool.store.base import ReserveItem
        store = PostgresStore(SimpleNamespace(url=sys.argv[1], key_prefix=sys.argv[2],
                                              connect_timeout_ms=2000, op_timeout_ms=5000))
        item = ReserveItem(key="k", dimension="tokens", limit=1000, amount=400)
        assert store.reserve("crashed", [item], 100).ok
        os._exit(9)
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", crasher, postgres_url, pg_schema], cwd=ROOT, check=False
    )
    assert p.returncode == 9
    store = PostgresStore(settings(postgres_url, pg_schema, 5000))
    item = ReserveItem(key="k", dimension="tokens", limit=1000, amount=0)
    assert store.states([item])[0].reserved == 400
    time.sleep(0.3)
    assert [e.reservation_id for e in store.expire()] == ["crashed"]
    s = store.states([item])[0]
    assert (s.used, s.reserved) == (400, 0)
    store.close()


def test_the_schema_is_versioned_and_a_newer_one_is_refused(
    postgres_server: PostgresServer, postgres_url: str, pg_schema: str
) -> None:
    store = PostgresStore(settings(postgres_url, pg_schema, 5000))
    item = ReserveItem(key="k", dimension="calls", limit=10, amount=1)
    assert store.reserve("a", [item], 60_000).ok
    store.close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            f"SELECT version FROM {pg_schema}.guardpool_schema WHERE component = 'store'"
        ).fetchone()
        assert row == (1,)
        conn.execute(
            f"UPDATE {pg_schema}.guardpool_schema SET version = 99 WHERE component = 'store'"
        )
    newer = PostgresStore(settings(postgres_url, pg_schema, 5000))
    with pytest.raises(StoreUnavailable, match="newer than this guardpool"):
        newer.reserve("b", [item], 60_000)
    newer.close()


def test_a_password_in_the_url_is_refused(pg_schema: str, tmp_path: Path) -> None:
    url = "postgresql://guardpool:secret@127.0.0.1:5432/guardpool"
    with pytest.raises(ValueError, match="PGPASSWORD"):
        PostgresStore(settings(url, pg_schema))
    cfg = {
        "store": {"backend": "postgres", "url": url},
        "audit": {"path": str(tmp_path / "audit.db")},
    }
    with pytest.raises(PolicyError, match="PGPASSWORD") as info:
        Enforcer.from_config(cfg)
    assert "store.url" in str(info.value)


def test_a_schema_name_that_is_not_an_identifier_is_refused(postgres_url: str) -> None:
    with pytest.raises(ValueError, match="schema name"):
        PostgresStore(settings(postgres_url, 'x"; DROP TABLE y; --'))
