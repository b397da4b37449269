"""The input contract: the bytes a guard sees, the size that is capped, the digest recorded.

    op.input ──► measure() ──► Measured(value, data)
                                 │ data = guard_bytes(value), encoded once per check:
                                 │   str                 UTF-8, a lone surrogate kept as its
                                 │                       3-byte form (``surrogatepass``)
                                 │   bytes-like          the bytes as they are
                                 │   anything else       JSON, keys sorted; a lone surrogate
                                 │                       as its ``\\udXXX`` escape
                                 ├─► size   = len(data) ─► capped against max_input_bytes
                                 │                         (enforcer, settle, pool: one measure)
                                 ├─► RE2 banks scan data
                                 └─► digest = sha256(data) ─► the ledger's input_sha256
    callable guards get the value itself: pack() carries it to the worker as msgpack
    (lone surrogates in an Ext, so hostile text arrives intact) and unpack_ext()
    restores it there.

Before this module each consumer measured on its own (UTF-8 in the enforcer,
msgpack in the pool, JSON in the ledger and the banks): an input just under the
cap passed the enforcer, was refused by the pool, and a fail-open guard warned
without ever running; a lone surrogate could not be sent to a callable guard at
all. An input outside the contract (not text, bytes or JSON-like data) or over
the cap is a deny whatever a guard's ``on_error`` says: no guard ran.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

import msgspec

#: msgpack ext codes of the pool's carrier (only on the rare path: text with a
#: lone surrogate, which UTF-8 msgpack strings cannot hold).
EXT_TEXT: Final[int] = 1  # a str, as UTF-8 with surrogatepass
EXT_PAIRS: Final[int] = 2  # a dict whose keys hold a lone surrogate, as [[k, v], ...]
EXT_INT: Final[int] = 3  # an int past msgpack's 64 bits (JSON has no such limit), as digits

_INT64, _UINT64 = -(2**63), 2**64
_json = msgspec.json.Encoder(order="sorted")
_SURROGATE = re.compile("([\ud800-\udfff])")
# What can go wrong encoding a value we did not build: unsupported types,
# non-string keys, ints past 64 bits, cycles or deep nesting, lone surrogates.
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)


class InputError(ValueError):
    """An input outside the contract: not text, bytes or JSON-like data. A deny, never a warn."""


def guard_bytes(value: Any) -> bytes:
    """(a) The bytes a guard sees: what RE2 banks scan, what is capped, what is hashed."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    try:
        return _json.encode(value)
    except _ENCODE_ERRORS:
        # Rare: a lone surrogate (JSON text cannot carry it raw), or non-string
        # dict keys (a sorted encode refuses them). Spell it out by hand.
        return canonical_json(value)


def input_size(value: Any) -> int:
    """(b) The size capped against ``max_input_bytes``: ``len(guard_bytes(value))``."""
    if isinstance(value, str) and value.isascii():  # O(1) check, no copy
        return len(value)
    if isinstance(value, bytes | bytearray):
        return len(value)
    return len(guard_bytes(value))


def input_digest(value: Any) -> str:
    """(c) The digest the ledger records: sha256 of ``guard_bytes(value)``, hex."""
    return hashlib.sha256(guard_bytes(value)).hexdigest()


class Measured:
    """An input measured once: its value, its bytes, their size and (lazily) digest.

    The enforcer measures ``op.input`` once and hands this to the ledger, the
    banks and the pool, so a check encodes its input once whatever the number
    of guards.
    """

    __slots__ = ("_digest", "data", "value")

    def __init__(self, value: Any, data: bytes) -> None:
        self.value = value
        self.data = data
        self._digest = ""

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def digest(self) -> str:
        if not self._digest:
            self._digest = hashlib.sha256(self.data).hexdigest()
        return self._digest


def plain(value: Any) -> Any:
    """The value itself, whether or not it comes measured."""
    return value.value if isinstance(value, Measured) else value


def measure(value: Any, what: str = "input") -> Measured:
    """``value`` with its bytes; ``InputError`` (a clear reason) when it is outside the contract."""
    if isinstance(value, Measured):
        return value
    try:
        return Measured(value, guard_bytes(value))
    except _ENCODE_ERRORS as exc:
        raise InputError(
            f"{what} is not text, bytes or JSON-like data ({type(value).__name__}): "
            f"{_describe(exc)}; no guard ran"
        ) from None


def too_large(size: int, cap: int, what: str = "input") -> str | None:
    """The reason an input (or a settle's output) of ``size`` bytes is refused, or None."""
    if size <= cap:
        return None
    return f"{what} too large: {size} bytes > max_input_bytes {cap}; no guard ran"


# -- the pool's carrier ---------------------------------------------------------------------


def pack(encoder: msgspec.msgpack.Encoder, value: Any) -> bytes:
    """``value`` as msgpack that ``unpack_ext`` restores: a job's input, a worker's answer.

    The fast path is msgspec's own encoding. Text with a lone surrogate, an
    int past 64 bits and anything else msgspec refuses take the slow path: the
    value as builtins, each such str or int in an ``Ext``. Raises ``InputError``
    when even that fails, so what ``measure`` accepts, the pool can carry.
    """
    try:
        return encoder.encode(value)
    except _ENCODE_ERRORS:
        pass
    try:
        plain = msgspec.to_builtins(value, builtin_types=(bytes, bytearray, memoryview))
        return encoder.encode(_carry(plain))
    except _ENCODE_ERRORS as exc:
        raise InputError(f"not msgpack data: {_describe(exc)}") from None


def unpack_ext(code: int, data: memoryview) -> Any:
    """The worker decoder's ``ext_hook``: restores what ``pack`` put in an Ext."""
    if code == EXT_TEXT:
        return bytes(data).decode("utf-8", "surrogatepass")
    if code == EXT_PAIRS:
        pairs = msgspec.msgpack.decode(data, ext_hook=unpack_ext)
        return {k: v for k, v in pairs}
    if code == EXT_INT:
        return int(bytes(data))
    raise msgspec.DecodeError(f"unknown msgpack extension {code}")


def _carry(value: Any) -> Any:
    """Builtins with what msgpack cannot hold wrapped: lone surrogates, ints past 64 bits."""
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64 <= value < _UINT64:
        return msgspec.msgpack.Ext(EXT_INT, str(value).encode())
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value
        return msgspec.msgpack.Ext(EXT_TEXT, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list):
        return [_carry(v) for v in value]
    if isinstance(value, dict):
        if any(isinstance(k, str) and _SURROGATE.search(k) for k in value):
            # An Ext is not hashable, so it cannot be a key: send the pairs instead.
            pairs = [[_carry(k), _carry(v)] for k, v in value.items()]
            return msgspec.msgpack.Ext(EXT_PAIRS, msgspec.msgpack.encode(pairs))
        return {k: _carry(v) for k, v in value.items()}
    return value


# -- canonical JSON, the slow path ----------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """msgspec's sorted JSON, written by hand where msgspec refuses the value.

    Also what the sidecar answers with when a decision quotes such text.

    Keys become strings (as JSON has them) and are sorted; a lone surrogate is
    written as its ``\\udXXX`` escape, the one way JSON text can hold it. Every
    other token is msgspec's, so a value both can encode gives the same bytes.
    """
    plain = msgspec.to_builtins(value, order="sorted", str_keys=True)
    out = bytearray()
    _emit(plain, out)
    return bytes(out)


def _emit(value: Any, out: bytearray) -> None:
    if isinstance(value, str):
        out += _json_text(value)
    elif isinstance(value, dict):
        out += b"{"
        for i, (k, v) in enumerate(value.items()):
            if i:
                out += b","
            out += _json_text(k)
            out += b":"
            _emit(v, out)
        out += b"}"
    elif isinstance(value, list):
        out += b"["
        for i, v in enumerate(value):
            if i:
                out += b","
            _emit(v, out)
        out += b"]"
    else:
        out += _json.encode(value)


def _json_text(text: str) -> bytes:
    if _SURROGATE.search(text) is None:
        return _json.encode(text)
    parts = [b'"']
    # re.split with a group: even items are ordinary text, odd ones a surrogate.
    for i, piece in enumerate(_SURROGATE.split(text)):
        if i % 2:
            parts.append(b"\\u%04x" % ord(piece))
        elif piece:
            parts.append(_json.encode(piece)[1:-1])
    parts.append(b'"')
    return b"".join(parts)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    # The message may quote the hostile input: keep it printable.
    text = str(exc) or type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
