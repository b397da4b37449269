"""Counters in Redis: one budget shared by many hosts, exact under races.

Each step of the protocol is one Lua script (``store/lua/*.lua``, shipped in
the package), so a whole multi-limit, multi-dimension reservation is atomic on
the server: no host can read "39 of 40" between another host's read and
write. The scripts implement the algorithm of ``engine.py`` (memory and SQLite)
and pass the same conformance suite.

    reserve(id, items) ──► FCALL reserve        KEYS = counters, deadlines, seq,
                                                       record, window keys of the items
                                                ARGV = now | '', id, ttl, msgpack items
                                                       (one flat array: pack_items())
                       ◄── msgpack [ok, counts, refused, expired] (array_like Structs)
    settle(id, actual) ──► FCALL settle         ARGV = now | '', id, dim, n, dim, n, ...
                       ◄── the same, plus the reservation's items to name the counts

- One round trip per step, over a lean client (``resp.py``): the scripts
  answer one msgpack string, so the client only packs a command and reads one
  bulk reply. Items travel as one flat array that starts with their hash
  fields (``pack_items``), read in Lua through named offsets
  (``a[b + AMOUNT]``); answers are positional arrays decoded by msgspec into
  named Structs here. The counters, and the earliest live deadline beside
  them, are read with one ``HMGET`` per step.
- Time is the server's (``TIME``) unless the store is given a clock, so hosts
  with skewed clocks agree on rolling windows and reservation deadlines; tests
  give a clock and move it instead of sleeping.
- Every key lives under one hash tag (``{prefix}``): the scripts also run on
  Redis Cluster, at the price of one budget namespace living in one slot.
- The steps are the functions of one library (``common.lua`` + every step
  file), loaded once per server (``FUNCTION LOAD`` when an ``FCALL`` finds it
  missing, which also covers a restarted server); where the server has no
  functions (Redis < 7, or an ACL forbids them) ``common.lua`` + one step file
  is a script run by ``EVALSHA`` (loaded on ``NOSCRIPT``).
- Any connection error or timeout raises StoreUnavailable: the enforcer
  denies. A dropped connection is retried once at once on a new connection
  (every script is idempotent by reservation id, so a reply lost in transit
  cannot count twice), a timeout never: the worst case is about
  2 x connect_timeout_ms + op_timeout_ms. A connection that failed is closed,
  never reused; the next step connects again by itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import cast

import msgspec

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
from guardpool.store.resp import (
    Connection,
    Function,
    NoFunctions,
    RedisReplyError,
    Script,
    parse_url,
)

RedisSettings = ServerStoreSettings  # the same settings as every server-backed store


STEPS = ("reserve", "settle", "release", "states", "expire")


def _lua(name: str) -> str:
    return (resources.files("guardpool.store") / "lua" / f"{name}.lua").read_text()


def script_source(name: str) -> str:
    """``common.lua`` and the named step as one script for EVALSHA."""
    return f"{_lua('common')}\n{_lua(name)}\nreturn steps.{name}(KEYS, ARGV)\n"


def library_source() -> tuple[str, str]:
    """(library name, source): ``common.lua`` and every step as one FUNCTION library."""
    body = "\n".join(_lua(name) for name in ("common", *STEPS))
    name = "guardpool_" + hashlib.sha1(body.encode()).hexdigest()[:16]
    register = "".join(
        f"redis.register_function('{name}_{step}', steps.{step})\n" for step in STEPS
    )
    return name, f"#!lua name={name}\n{body}\n{register}"


class _WireExpired(msgspec.Struct, array_like=True, frozen=True):
    reservation_id: str
    charged: tuple[str | int, ...]  # dimension, amount, dimension, amount, ...


class _WireAnswer(msgspec.Struct, array_like=True, frozen=True):
    ok: bool
    counts: tuple[int, ...]  # used, reserved of each item in turn
    refused: tuple[int, ...]
    expired: tuple[_WireExpired, ...]
    # settle: the items' bytes as the reserve stored them (a msgpack str: Lua
    # has no bytes type), so the counts can be named whoever made the reservation.
    items: msgspec.Raw = msgspec.Raw(b"\xa0")


_decode_answer = msgspec.msgpack.Decoder(_WireAnswer).decode
_decode_counts = msgspec.msgpack.Decoder(tuple[int, ...]).decode
_decode_expired = msgspec.msgpack.Decoder(tuple[_WireExpired, ...]).decode
_decode_items = msgspec.msgpack.Decoder(tuple[str | int | bool, ...]).decode
_encode = msgspec.msgpack.Encoder().encode

# The six values per item that follow the 2n hash fields (common.lua: base()).
_PER_ITEM = 6


# Caches of pure functions of their key, emptied when full: a host's checks
# touch the same few counters and item sets over and over.
_CACHE_SIZE = 1024
_fields_cache: dict[tuple[str, str], tuple[str, str]] = {}
_names_cache: dict[bytes, list[tuple[str, str, int]]] = {}
_packed_cache: dict[tuple[ReserveItem, ...], bytes] = {}


def _fields(key: str, dimension: str) -> tuple[str, str]:
    """The counter's two hash fields, used and reserved (common.lua's header)."""
    fields = _fields_cache.get((key, dimension))
    if fields is None:
        counter = f"{key}\n{dimension}"
        fields = ("u" + counter, "r" + counter)
        if len(_fields_cache) >= _CACHE_SIZE:
            _fields_cache.clear()
        _fields_cache[(key, dimension)] = fields
    return fields


def pack_items(items: Sequence[ReserveItem]) -> bytes:
    """The items' wire bytes (_pack_items), cached by the items' values: a check
    reserves the same items as the last check of its labels, amounts included."""
    key = tuple(items)
    packed = _packed_cache.get(key)
    if packed is None:
        packed = _pack_items(items)
        if len(_packed_cache) >= _CACHE_SIZE:
            _packed_cache.clear()
        _packed_cache[key] = packed
    return packed


def _pack_items(items: Sequence[ReserveItem]) -> bytes:
    """Items as the scripts read them: one flat array, first every item's two hash
    fields (used, reserved: ``u``/``r`` + key + newline + dimension, so the script
    neither builds names nor a table per item), then dimension, limit, amount,
    headroom, window_ms and check of each item."""
    flat: list[str | int | bool] = []
    for it in items:
        flat += _fields(it.key, it.dimension)
    for it in items:
        flat += (it.dimension, it.limit, it.amount, it.headroom, it.window_ms, bool(it.check))
    return _encode(flat)


def _names(packed: bytes) -> list[tuple[str, str, int]]:
    """(key, dimension, limit) of each item of the bytes pack_items() made."""
    names = _names_cache.get(packed)
    if names is None:
        names = _named(_decode_items(packed))
        if len(_names_cache) >= _CACHE_SIZE:
            _names_cache.clear()
        _names_cache[packed] = names
    return names


def _named(flat: Sequence[str | int | bool]) -> list[tuple[str, str, int]]:
    n = len(flat) // (2 + _PER_ITEM)
    used_fields = cast("Sequence[str]", flat[0 : 2 * n : 2])
    dimensions = cast("Sequence[str]", flat[2 * n :: _PER_ITEM])
    limits = cast("Sequence[int]", flat[2 * n + 1 :: _PER_ITEM])
    try:
        # "u" + key + "\n" + dimension: the key is what lies between.
        named = [
            (u[1 : len(u) - len(d) - 1], d, limit)
            for u, d, limit in zip(used_fields, dimensions, limits, strict=True)
        ]
    except (TypeError, ValueError):
        named = []
    if len(named) != n or not all(
        type(k) is str and type(d) is str and type(limit) is int for k, d, limit in named
    ):
        raise StoreUnavailable("budget store unavailable: redis: malformed reservation record")
    return named


_STR_HEADS = {0xD9: 2, 0xDA: 3, 0xDB: 5}  # str 8, 16, 32: head and length bytes


def _str_payload(raw: bytes) -> bytes:
    """The bytes inside one msgpack str (lua-cmsgpack packs every Lua string as str)."""
    head = raw[0]
    if head & 0xE0 == 0xA0:
        return raw[1:]
    skip = _STR_HEADS.get(head)
    if skip is None:
        raise StoreUnavailable("budget store unavailable: redis: malformed answer")
    return raw[skip:]


def _expired(wire: Sequence[_WireExpired]) -> tuple[Expired, ...]:
    out = []
    for e in wire:
        flat = e.charged
        charged = {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        out.append(Expired(reservation_id=e.reservation_id, charged=charged))
    return tuple(out)


def _states(
    named: Iterable[tuple[str, str, int]], counts: Sequence[int]
) -> tuple[CounterState, ...]:
    return tuple(
        CounterState(key=key, dimension=dimension, used=used, reserved=reserved, limit=limit)
        for (key, dimension, limit), used, reserved in zip(
            named, counts[::2], counts[1::2], strict=True
        )
    )


def _item_names(items: Sequence[ReserveItem]) -> Iterator[tuple[str, str, int]]:
    return ((it.key, it.dimension, it.limit) for it in items)


class RedisStore:
    def __init__(self, config: RedisSettings, *, clock: Clock | None = None) -> None:
        if not config.url:
            raise ValueError("the redis store needs a url")
        self._address = parse_url(config.url)
        self._connect_timeout = config.connect_timeout_ms / 1000
        self._op_timeout = config.op_timeout_ms / 1000
        self._prefix = "{" + config.key_prefix + "}"
        self._clock = clock
        p = self._prefix
        self._fixed = [f"{p}:{name}".encode() for name in ("counters", "deadlines", "seq")]
        self._scripts = {name: Script(script_source(name)) for name in STEPS}
        library, source = library_source()
        self._functions = {name: Function(source, f"{library}_{name}") for name in STEPS}
        # Until the server shows it has no functions (Redis < 7): then EVALSHA.
        self._use_functions = True
        # Idle connections; a step pops one (or connects) and pushes it back
        # when it succeeded. list.pop/append are atomic, so threads share it.
        self._idle: list[Connection] = []
        self._pid = os.getpid()

    # -- keys

    def _record(self, reservation_id: str) -> bytes:
        return f"{self._prefix}:rsv:{reservation_id}".encode()

    def _window_keys(self, items: Sequence[ReserveItem]) -> list[bytes]:
        keys: list[bytes] = []
        for it in items:
            if it.window_ms:
                counter = f"{it.key}\n{it.dimension}"
                keys += (
                    f"{self._prefix}:w:{counter}".encode(),
                    f"{self._prefix}:ws:{counter}".encode(),
                )
        return keys

    def _now(self) -> bytes:
        return b"%d" % self._clock() if self._clock is not None else b""

    # -- the one round trip

    def _connect(self) -> Connection:
        return Connection(self._address, self._connect_timeout, self._op_timeout)

    def _run(self, name: str, keys: list[bytes], *args: bytes) -> bytes | int | None:
        if self._pid != os.getpid():
            # A forked child must not share its parent's sockets: replies would cross.
            self._idle, self._pid = [], os.getpid()
        script = self._scripts[name]
        argv = [self._now(), *args]
        for attempt in (1, 2):
            conn = None
            try:
                conn = self._idle.pop() if self._idle else self._connect()
                if self._use_functions:
                    try:
                        reply = conn.fcall(self._functions[name], keys, argv)
                    except NoFunctions:
                        self._use_functions = False
                        reply = conn.evalsha(script, keys, argv)
                else:
                    reply = conn.evalsha(script, keys, argv)
            except RedisReplyError as exc:
                if conn is not None:  # the connection itself is fine
                    self._idle.append(conn)
                raise StoreUnavailable(f"budget store unavailable: redis error: {exc}") from None
            except TimeoutError as exc:
                if conn is not None:
                    conn.close()  # its late reply must never answer another step
                raise StoreUnavailable(f"budget store unavailable: redis: timeout {exc}") from None
            except OSError as exc:
                if conn is not None:
                    conn.close()
                # The server went away: every idle connection is as stale as this one.
                for stale in self._drain():
                    stale.close()
                if attempt == 2:
                    raise StoreUnavailable(f"budget store unavailable: redis: {exc}") from None
                continue
            self._idle.append(conn)
            return reply
        raise AssertionError("unreachable")

    def _drain(self) -> list[Connection]:
        idle, self._idle = self._idle, []
        return idle

    def _bytes(self, reply: bytes | int | None) -> bytes:
        if not isinstance(reply, bytes):
            raise StoreUnavailable(f"budget store unavailable: redis: unexpected reply {reply!r}")
        return reply

    # -- BudgetStore

    def reserve(
        self, reservation_id: str, items: Sequence[ReserveItem], ttl_ms: int
    ) -> StoreAnswer:
        check_items(items)  # Lua numbers are doubles: bound them before they get there
        packed = pack_items(items)
        keys = [*self._fixed, self._record(reservation_id), *self._window_keys(items)]
        rid = reservation_id.encode()
        w = _decode_answer(self._bytes(self._run("reserve", keys, rid, b"%d" % ttl_ms, packed)))
        return StoreAnswer(
            ok=w.ok,
            states=_states(_item_names(items), w.counts),
            refused=w.refused,
            expired=_expired(w.expired) if w.expired else (),
        )

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer:
        check_actual(actual)
        args = [reservation_id.encode()]
        for dimension, amount in actual.items():
            args += (dimension.encode(), b"%d" % amount)
        keys = [*self._fixed, self._record(reservation_id)]
        w = _decode_answer(self._bytes(self._run("settle", keys, *args)))
        payload = _str_payload(bytes(w.items))
        return StoreAnswer(
            ok=w.ok,
            states=_states(_names(payload), w.counts) if payload else (),
            expired=_expired(w.expired) if w.expired else (),
        )

    def release(self, reservation_id: str) -> bool:
        keys = [*self._fixed, self._record(reservation_id)]
        return bool(self._run("release", keys, reservation_id.encode()))

    def states(self, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]:
        packed = pack_items(items)
        keys = [*self._fixed, *self._window_keys(items)]
        counts = _decode_counts(self._bytes(self._run("states", keys, packed)))
        return _states(_item_names(items), counts)

    def expire(self) -> tuple[Expired, ...]:
        return _expired(_decode_expired(self._bytes(self._run("expire", list(self._fixed)))))

    def close(self) -> None:
        for conn in self._drain():
            conn.close()
