"""Counters in PostgreSQL: budgets shared by a fleet, durable where money is kept.

The reservation algorithm is ``engine.py``'s, the one memory and SQLite run;
this module only provides its ``Transaction`` over one PostgreSQL transaction:

1. ``prelude``: the clock, this reservation's record and the overdue live
   reservations (one round trip, no locks);
2. ``lock``: every counter the step may touch — the request's, the record's,
   the overdue ones' — with ``SELECT ... ORDER BY key, dimension FOR UPDATE``,
   one order for every host, so steps over shared counters queue instead of
   deadlocking, and steps over disjoint counters (other runs, other
   principals) never wait for each other; then the records are read again,
   because what another host committed while this one waited is seen only now;
3. the engine decides in Python on the locked values (reads are served from
   them, writes are buffered);
4. the writes go out as a few array statements, then COMMIT.

About six round trips per step (BEGIN, prelude, lock, records, writes, COMMIT):
on one machine that is what separates it from Redis' one script call; see the
figures in ``docs/deploy.md``.

Row locks, not SERIALIZABLE: under contention SERIALIZABLE aborts all but one of
the racing transactions and they must start over, so a hot budget (a team's
daily spend) spends its time in retries; row locks make them wait in line
instead. ``bench/bench_pg_locking.py`` measures both; ``docs/deploy.md`` has
the figures. ``serializable=True`` keeps the other mode for that comparison.

Time is the server's clock (``clock_timestamp()``), as Redis uses ``TIME``:
hosts with skewed clocks agree on windows and deadlines. Every step is bounded
by ``op_timeout_ms`` (``guardpool/pg/pool.py``); any failure is
``StoreUnavailable``, which the enforcer turns into a denial. Tables live in the
schema named by ``key_prefix``, created and migrated on first use from
``store/sql/NNN_*.sql``; the statements are in ``store/sql/queries.sql``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import TypeVar

import msgspec

from guardpool.pg.migrate import SchemaError, migrate
from guardpool.pg.pool import DeadlineConnection, Pg, PgUnavailable
from guardpool.store import engine
from guardpool.store.base import (
    Clock,
    CounterState,
    Expired,
    ReserveItem,
    ServerStoreSettings,
    StoreAnswer,
)
from guardpool.store.errors import StoreUnavailable

T = TypeVar("T")
Key = tuple[str, str]

# Overdue reservations charged per step, at most (the rest go in the next steps).
EXPIRE_BATCH = 100
# Finished reservations answer retries for this long past their deadline.
KEEP_FINISHED_MS = 24 * 3600 * 1000
_PRUNE_EVERY = 1000

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(engine.Reservation).decode


def _load_queries() -> dict[str, str]:
    text = resources.files("guardpool.store").joinpath("sql", "queries.sql").read_text("utf-8")
    queries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("-- name:"):
            name = line.split(":", 1)[1].strip()
            queries[name] = ""
        elif name is not None and not line.startswith("--"):
            queries[name] += line + "\n"
    return {k: v.strip() for k, v in queries.items()}


Q = _load_queries()


PostgresSettings = ServerStoreSettings  # the same settings as every server-backed store


class _Retry(Exception):
    """A record appeared whose counters this step had not locked: start again."""


class _Tx:
    """engine.Transaction over locked counter rows; writes are sent by ``flush``."""

    def __init__(
        self,
        conn: DeadlineConnection,
        now_ms: int,
        counters: dict[Key, list[int]],
        records: dict[str, engine.Reservation | None],
        overdue: list[engine.Reservation],
    ) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self._counters = counters
        self._records = records
        self._overdue = overdue
        self._windows: dict[tuple[str, str, int], int] = {}
        self._dirty: set[Key] = set()
        self._charges: list[tuple[str, str, int]] = []
        self._prune: dict[Key, int] = {}
        self._puts: dict[str, engine.Reservation] = {}

    def _row(self, item: ReserveItem) -> list[int]:
        # A counter nobody has locked would be written outside the lock: refuse.
        return self._counters[(item.key, item.dimension)]

    def _window(self, item: ReserveItem) -> int:
        k = (item.key, item.dimension, item.window_ms)
        if k not in self._windows:
            (total,) = self.conn.execute(
                Q["window_sum"],
                {"key": item.key, "dim": item.dimension, "horizon": self.now_ms - item.window_ms},
            ).fetchone() or (0,)
            self._windows[k] = int(total)
        return self._windows[k]

    def counters(self, items: Sequence[ReserveItem]) -> list[tuple[int, int]]:
        out = []
        for item in items:
            used, reserved = self._row(item)
            out.append(((self._window(item) if item.window_ms else used), reserved))
        return out

    def add_reserved(self, deltas: Sequence[tuple[ReserveItem, int]]) -> None:
        for item, delta in deltas:
            self._row(item)[1] += delta
            self._dirty.add((item.key, item.dimension))

    def charge(self, charges: Sequence[tuple[ReserveItem, int]]) -> None:
        for item, amount in charges:
            row = self._row(item)
            row[1] -= item.amount
            self._dirty.add((item.key, item.dimension))
            if not item.window_ms:
                row[0] += amount
                continue
            k = (item.key, item.dimension, item.window_ms)
            self._windows[k] = self._window(item) + amount
            self._charges.append((item.key, item.dimension, amount))
            self._prune[(item.key, item.dimension)] = self.now_ms - item.window_ms

    def get(self, reservation_id: str) -> engine.Reservation | None:
        return self._records.get(reservation_id)

    def put(self, reservation: engine.Reservation) -> None:
        self._records[reservation.id] = reservation
        self._puts[reservation.id] = reservation

    def overdue(self) -> list[engine.Reservation]:
        due, self._overdue = self._overdue, []
        return due

    def flush(self) -> None:
        if self._dirty:
            keys = sorted(self._dirty)
            self.conn.execute(
                Q["write_counters"],
                {
                    "keys": [k for k, _ in keys],
                    "dims": [d for _, d in keys],
                    "used": [self._counters[k][0] for k in keys],
                    "reserved": [self._counters[k][1] for k in keys],
                },
            )
        if self._prune:
            pruned = sorted(self._prune.items())
            self.conn.execute(
                Q["prune_charges"],
                {
                    "keys": [k for (k, _), _ in pruned],
                    "dims": [d for (_, d), _ in pruned],
                    "horizons": [h for _, h in pruned],
                },
            )
        if self._charges:
            self.conn.execute(
                Q["add_charges"],
                {
                    "keys": [k for k, _, _ in self._charges],
                    "dims": [d for _, d, _ in self._charges],
                    "ts": [self.now_ms] * len(self._charges),
                    "amounts": [a for _, _, a in self._charges],
                },
            )
        if self._puts:
            puts = list(self._puts.values())
            self.conn.execute(
                Q["put_reservations"],
                {
                    "ids": [r.id for r in puts],
                    "states": [r.state for r in puts],
                    "deadlines": [r.deadline_ms for r in puts],
                    "records": [_encode(r) for r in puts],
                },
            )


def _keys(items: Iterable[ReserveItem]) -> set[Key]:
    return {(i.key, i.dimension) for i in items}


class PostgresStore:
    """The budget store protocol on PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        config: PostgresSettings,
        *,
        clock: Clock | None = None,
        serializable: bool = False,
        pool_size: int = 8,
    ) -> None:
        try:
            self._pg = Pg(
                config.url or "",
                config.key_prefix,
                op_timeout_ms=config.op_timeout_ms,
                connect_timeout_ms=config.connect_timeout_ms,
                max_size=pool_size,
                serializable=serializable,
            )
        except ValueError as exc:
            raise ValueError(f"store.url / store.key_prefix: {exc}") from None
        self.schema = self._pg.schema
        self._clock = clock
        self._serializable = serializable
        self._known: set[Key] = set()
        self._lock = threading.Lock()
        self._migrated = False
        self._reserves = 0

    # -- plumbing

    def _call(self, step: Callable[[DeadlineConnection], T]) -> T:
        try:
            if not self._migrated:
                self._migrate()
            return self._pg.call(step, idempotent=True)
        except PgUnavailable as exc:
            raise StoreUnavailable(f"budget store unavailable: postgres: {exc}") from None

    def _migrate(self) -> None:
        # Lazily, on the first step: a server that is down when the host starts is
        # a denial per check until it is back, not a host that cannot start.
        def step(conn: DeadlineConnection) -> None:
            migrate(conn, self.schema, "store", "guardpool.store")

        with self._lock:
            if not self._migrated:
                try:
                    self._pg.call(step, idempotent=True, serializable=False)
                except SchemaError as exc:
                    raise PgUnavailable(str(exc)) from None
                self._migrated = True

    def _ensure(self, keys: set[Key]) -> None:
        """Create missing counter rows in a transaction of their own (see queries.sql)."""
        new = sorted(keys - self._known)
        if not new:
            return

        def step(conn: DeadlineConnection) -> None:
            conn.execute(Q["ensure"], {"keys": [k for k, _ in new], "dims": [d for _, d in new]})

        self._call(step)
        with self._lock:
            self._known.update(new)

    def _atomic(
        self,
        step: Callable[[_Tx], T],
        reservation_id: str | None,
        items: Sequence[ReserveItem] = (),
    ) -> T:
        self._ensure(_keys(items))

        def run(conn: DeadlineConnection) -> T:
            now_ms, raw, overdue_raw = conn.execute(
                Q["prelude"],
                {"now": self._now(), "id": reservation_id or "", "batch": EXPIRE_BATCH},
            ).fetchone() or (0, None, [])
            own = _decode(raw) if raw is not None and reservation_id else None
            candidates = [_decode(r) for r in overdue_raw]
            keys = _keys(items)
            if own is not None:
                keys |= _keys(own.items)
            for c in candidates:
                keys |= _keys(c.items)
            ordered = sorted(keys)
            locked = conn.execute(
                Q["read" if self._serializable else "lock"],
                {"keys": [k for k, _ in ordered], "dims": [d for _, d in ordered]},
            )
            ids = [c.id for c in candidates] + ([reservation_id] if reservation_id else [])
            # A statement of its own, after the locks are held: it sees what another
            # host committed while this one waited (the lock's snapshot would not).
            reread = conn.execute(Q["records"], {"ids": ids}) if ids else None
            counters = {(k, d): [int(u), int(r)] for k, d, u, r in locked.fetchall()}
            for k in ordered:
                counters.setdefault(k, [0, 0])
            records: dict[str, engine.Reservation | None] = {}
            if reread is not None:
                for rid, record in reread.fetchall():
                    records[rid] = _decode(record)
            if reservation_id:
                records.setdefault(reservation_id, None)
                latest = records[reservation_id]
                if latest is not None and not _keys(latest.items) <= keys:
                    raise _Retry
            overdue = []
            for c in candidates:
                r = records.get(c.id)
                if r is not None and r.state == "live" and r.deadline_ms < now_ms:
                    overdue.append(r)
            tx = _Tx(conn, int(now_ms), counters, records, overdue)
            result = step(tx)
            tx.flush()
            return result

        for _ in range(3):
            try:
                return self._call(run)
            except _Retry:
                continue
        raise StoreUnavailable("budget store unavailable: postgres: reservation kept changing")

    def _now(self) -> int | None:
        return self._clock() if self._clock is not None else None

    # -- BudgetStore

    def reserve(
        self, reservation_id: str, items: Sequence[ReserveItem], ttl_ms: int
    ) -> StoreAnswer:
        self._reserves += 1
        if self._reserves % _PRUNE_EVERY == 0:
            self.prune()
        return self._atomic(
            lambda tx: engine.reserve(tx, reservation_id, items, ttl_ms), reservation_id, items
        )

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer:
        return self._atomic(lambda tx: engine.settle(tx, reservation_id, actual), reservation_id)

    def release(self, reservation_id: str) -> bool:
        return self._atomic(lambda tx: engine.release(tx, reservation_id), reservation_id)

    def states(self, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]:
        return self._atomic(lambda tx: engine.states_of(tx, items), None, items)

    def expire(self) -> tuple[Expired, ...]:
        return self._atomic(engine.expire, None)

    def prune(self) -> int:
        """Forget finished reservations past the idempotency window; returns how many."""

        def step(conn: DeadlineConnection) -> int:
            cur = conn.execute(
                Q["prune_reservations"], {"now": self._now(), "keep": KEEP_FINISHED_MS}
            )
            return int(cur.rowcount)

        return self._call(step)

    def close(self) -> None:
        self._pg.close()
