"""Connections with deadlines: every step is bounded, whatever the server does.

Data flow: ``Pg.call(step)`` takes a pooled connection, arms its deadline, runs
``step`` (statements of one transaction), commits, and returns the connection.
Any failure becomes ``PgUnavailable``; callers turn that into a denial.

- A killed server breaks the pool's idle connections; they fail at once, and
  a step that failed *before* its COMMIT was sent rolled back on the server,
  so it is tried again on another connection while time remains (the pool
  reconnects in the background). A failure *during* COMMIT is ambiguous (it
  may have committed), so only steps declared idempotent are retried then.
- A hung server (stopped, partitioned) keeps connections open and answers
  nothing. psycopg waits on the socket through ``Connection.wait``; the
  subclass here gives that wait the time left until the deadline and closes
  the connection when it passes (its state is unknown), so the step fails
  within ``op_timeout_ms``. libpq's own ``connect_timeout`` cannot go below 2 s,
  which is why connecting happens in the pool's background workers and a step
  only ever waits for the pool (``getconn(timeout=...)``).
- Credentials come from libpq's environment (``PGPASSWORD``, ``PGPASSFILE``,
  ``~/.pgpass``, ``PGUSER`` ...): a URL with a password is refused, so a
  secret never sits in a policy file.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg import conninfo as _conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PgUnavailable(Exception):
    """PostgreSQL could not be reached, answered too late, or refused the step."""


class _DeadlineExceeded(psycopg.OperationalError):
    pass


class DeadlineConnection(psycopg.Connection[Any]):
    """A connection whose socket waits end at ``deadline`` (``time.monotonic()``)."""

    deadline: float | None = None

    def wait(
        self,
        gen: Generator[Any, Any, T],
        interval: float = 0.1,
        timeout: float | None = None,
    ) -> T:
        if self.deadline is None:
            return super().wait(gen, interval=interval, timeout=timeout)
        left = self.deadline - time.monotonic()
        if timeout is not None:
            left = min(left, timeout)
        try:
            return super().wait(gen, interval=interval, timeout=max(left, 0.001))
        except psycopg.errors._WaitTimeout:
            # Mid-protocol with a silent server: the connection cannot be reused.
            self.pgconn.finish()
            raise _DeadlineExceeded("no answer from the server within the deadline") from None


def check_url(url: str | None) -> str:
    """The URL if it is a usable libpq URL without a password; ValueError otherwise."""
    if url is None:
        raise ValueError('the postgres backend needs url = "postgresql://user@host:5432/db"')
    try:
        params = _conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"not a PostgreSQL URL: {exc}") from None
    if params.get("password"):
        raise ValueError(
            "the URL carries a password: put it in the environment (PGPASSWORD or a "
            "~/.pgpass / PGPASSFILE entry), never in the policy file"
        )
    return url


def check_schema(name: str) -> str:
    """A schema name guardpool may create: lower-case letters, digits and _, at most 63."""
    if not _SCHEMA_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not usable as a PostgreSQL schema name "
            "(lower-case letters, digits and _, not starting with a digit, at most 63)"
        )
    return name


class Pg:
    """A pool of deadline connections whose ``search_path`` is one guardpool schema."""

    def __init__(
        self,
        url: str,
        schema: str,
        *,
        op_timeout_ms: int,
        connect_timeout_ms: int,
        max_size: int = 8,
        serializable: bool = False,
    ) -> None:
        self.url = check_url(url)
        self.schema = check_schema(schema)
        self.timeout = op_timeout_ms / 1000
        self.serializable = serializable
        self.retries = 0  # transactions run again after a serialization failure or deadlock
        self._lock = threading.Lock()
        self.pool: ConnectionPool[DeadlineConnection] = ConnectionPool(
            url,
            connection_class=DeadlineConnection,
            kwargs={
                "autocommit": False,
                "options": f"-c search_path={schema}",
                # libpq floors this at 2 s; it only bounds the pool's own workers.
                "connect_timeout": max(2, -(-connect_timeout_ms // 1000)),
                "application_name": "guardpool",
            },
            min_size=1,
            max_size=max_size,
            open=False,
            name=f"guardpool-{schema}",
        )
        # Opens without waiting: a server that is down now is a denial per step, not
        # a host that cannot start.
        self.pool.open(wait=False)

    def call(
        self,
        step: Callable[[DeadlineConnection], T],
        *,
        idempotent: bool,
        timeout: float | None = None,
        serializable: bool | None = None,
    ) -> T:
        """Run ``step`` in one transaction and commit it, within ``op_timeout_ms``
        (or ``timeout`` seconds: a long read such as a ledger walk). ``serializable``
        overrides the pool's isolation (migrations need READ COMMITTED: a
        SERIALIZABLE snapshot taken before the migration lock would not see what
        the host that held it created)."""
        start = time.monotonic()
        deadline = start + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PgUnavailable(f"no answer within {(deadline - start) * 1000:.0f} ms")
            try:
                conn = self.pool.getconn(timeout=left)
            except PoolTimeout:
                raise PgUnavailable(
                    f"no connection within {(deadline - start) * 1000:.0f} ms (server down?)"
                ) from None
            except PoolClosed:
                raise PgUnavailable("the connection pool is closed") from None
            committing = False
            try:
                conn.deadline = deadline
                wanted = self.serializable if serializable is None else serializable
                conn.isolation_level = (
                    psycopg.IsolationLevel.SERIALIZABLE if wanted else None  # server default
                )
                result = step(conn)
                committing = True
                conn.commit()
                return result
            except (
                psycopg.errors.SerializationFailure,
                psycopg.errors.DeadlockDetected,
            ):
                # Rolled back by the server as a whole: safe to run again, after a
                # random pause so the same racers do not collide again in step.
                _rollback(conn)
                self.retries += 1
                time.sleep(random.uniform(0, 0.002))
                continue
            except psycopg.OperationalError as exc:
                dropped = (conn.broken or conn.closed) and not isinstance(exc, _DeadlineExceeded)
                # A connection that died before COMMIT left nothing behind on the server.
                if dropped and (not committing or idempotent):
                    continue
                raise PgUnavailable(_message(exc)) from None
            except psycopg.Error as exc:
                _rollback(conn)
                raise PgUnavailable(_message(exc)) from None
            except BaseException:
                _rollback(conn)
                raise
            finally:
                conn.deadline = None
                self.pool.putconn(conn)

    def close(self) -> None:
        self.pool.close(timeout=1.0)


def _rollback(conn: DeadlineConnection) -> None:
    if not (conn.broken or conn.closed):
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
