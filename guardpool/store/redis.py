"""Counters in Redis: one budget shared by many hosts, exact under races.

Each step of the protocol is one Lua script (``store/lua/*.lua``, shipped in
the package), so a whole multi-limit, multi-dimension reservation is atomic on
the server: no host can read "39 of 40" between another host's read and
write. The scripts implement the algorithm of ``engine.py`` (memory and SQLite)
and pass the same conformance suite.

    reserve(id, items) ──► EVALSHA reserve.lua  KEYS = counters, deadlines, seq,
                                                       record, window keys of the items
                                                ARGV = now | '', id, ttl, msgpack items
                       ◄── msgpack StoreAnswer (decoded by msgspec straight into Structs)

- Time is the server's (``TIME``) unless the store is given a clock, so hosts
  with skewed clocks agree on rolling windows and reservation deadlines; tests
  give a clock and move it instead of sleeping.
- Every key lives under one hash tag (``{prefix}``): the scripts also run on
  Redis Cluster, at the price of one budget namespace living in one slot.
- Scripts are loaded once (``SCRIPT LOAD`` by sha on first use) and loaded again
  after a server restart flushed them (NOSCRIPT).
- Any connection error or timeout raises StoreUnavailable: the enforcer
  denies. A dropped connection is retried once at once (every script is
  idempotent by reservation id, so a reply lost in transit cannot count twice),
  a timeout never: the worst case is about 2 x connect_timeout_ms +
  op_timeout_ms. redis-py's connection pool reconnects by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import msgspec
import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from guardpool.store.base import (
    Clock,
    CounterState,
    Expired,
    ReserveItem,
    ServerStoreSettings,
    StoreAnswer,
    check_actual,
    check_items,
)
from guardpool.store.errors import StoreUnavailable

T = TypeVar("T")


RedisSettings = ServerStoreSettings  # the same settings as every server-backed store


def script_source(name: str) -> str:
    """``common.lua`` followed by the named script, as the server runs it."""
    lua = resources.files("guardpool.store") / "lua"
    return (lua / "common.lua").read_text() + (lua / f"{name}.lua").read_text()


class _WireExpired(msgspec.Struct, frozen=True):
    reservation_id: str
    # cmsgpack packs an empty Lua table as an array: a reservation of no items.
    charged: dict[str, int] | list[int]


class _WireAnswer(msgspec.Struct, frozen=True):
    ok: bool
    states: tuple[CounterState, ...]
    refused: tuple[int, ...]
    expired: tuple[_WireExpired, ...]


_decode_answer = msgspec.msgpack.Decoder(_WireAnswer).decode
_decode_states = msgspec.msgpack.Decoder(tuple[CounterState, ...]).decode
_decode_expired = msgspec.msgpack.Decoder(tuple[_WireExpired, ...]).decode
_encode = msgspec.msgpack.Encoder().encode


def _expired(wire: Sequence[_WireExpired]) -> tuple[Expired, ...]:
    return tuple(
        Expired(
            reservation_id=e.reservation_id,
            charged=e.charged if isinstance(e.charged, dict) else {},
        )
        for e in wire
    )


def _answer(raw: bytes) -> StoreAnswer:
    w = _decode_answer(raw)
    return StoreAnswer(
        ok=w.ok,
        states=w.states,
        refused=w.refused,
        expired=_expired(w.expired) if w.expired else (),
    )


class RedisStore:
    def __init__(self, config: RedisSettings, *, clock: Clock | None = None) -> None:
        if not config.url:
            raise ValueError("the redis store needs a url")
        self._prefix = "{" + config.key_prefix + "}"
        self._clock = clock
        self._client = redis.Redis.from_url(
            config.url,
            socket_connect_timeout=config.connect_timeout_ms / 1000,
            socket_timeout=config.op_timeout_ms / 1000,
            # redis-py's default retries three times with up to seconds of backoff,
            # which would hold a denied check far past op_timeout_ms.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        )
        p = self._prefix
        self._fixed = [f"{p}:counters", f"{p}:deadlines", f"{p}:seq"]
        scripts = ("reserve", "settle", "release", "states", "expire")
        self._scripts = {
            name: self._client.register_script(script_source(name)) for name in scripts
        }

    # -- keys

    def _record(self, reservation_id: str) -> str:
        return f"{self._prefix}:res:{reservation_id}"

    def _window_keys(self, items: Sequence[ReserveItem]) -> list[str]:
        keys: list[str] = []
        for it in items:
            if it.window_ms:
                counter = f"{it.key}\n{it.dimension}"
                keys += (f"{self._prefix}:w:{counter}", f"{self._prefix}:ws:{counter}")
        return keys

    def _now(self) -> str:
        return str(self._clock()) if self._clock is not None else ""

    def _run(self, name: str, keys: list[str], *args: Any) -> Any:
        script = self._scripts[name]
        return self._call(lambda: script(keys=keys, args=[self._now(), *args]))

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"budget store unavailable: redis: {exc}") from None
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"budget store unavailable: redis error: {exc}") from None

    # -- BudgetStore

    def reserve(
        self, reservation_id: str, items: Sequence[ReserveItem], ttl_ms: int
    ) -> StoreAnswer:
        check_items(items)  # Lua numbers are doubles: bound them before they get there
        keys = [*self._fixed, self._record(reservation_id), *self._window_keys(items)]
        return _answer(self._run("reserve", keys, reservation_id, ttl_ms, _encode(list(items))))

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer:
        check_actual(actual)
        keys = [*self._fixed, self._record(reservation_id)]
        return _answer(self._run("settle", keys, reservation_id, _encode(dict(actual))))

    def release(self, reservation_id: str) -> bool:
        keys = [*self._fixed, self._record(reservation_id)]
        return bool(self._run("release", keys, reservation_id))

    def states(self, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]:
        keys = [*self._fixed, *self._window_keys(items)]
        raw = self._run("states", keys, _encode(list(items)))
        states: tuple[CounterState, ...] = _decode_states(raw)
        return states

    def expire(self) -> tuple[Expired, ...]:
        return _expired(_decode_expired(self._run("expire", list(self._fixed))))

    def close(self) -> None:
        self._client.close()
