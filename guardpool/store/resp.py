"""A lean Redis client for the budget store's one command: FCALL (or EVALSHA).

The store sends one script call per step and reads one reply, a bulk string
(a msgpack answer) or an integer. redis-py spent more time per call than the
server spends running the script (command packing through generic encoders,
connection-pool checkout, its parser, observability hooks), so the hot path
here is a plain socket: the command is packed with byte formatting, the reply
read with one ``recv`` in the common case.

    Connection.fcall(function, keys, args) ──► bytes | int
                 ├─ function not found: FUNCTION LOAD (once per server) and again
                 └─ no functions on this server (Redis < 7): NoFunctions, and the
                    store uses
    Connection.evalsha(script, keys, args) ──► bytes | int
                 ├─ -NOSCRIPT: SCRIPT LOAD (once per server start) and again
                 ├─ other -ERR replies: RedisReplyError
                 └─ socket errors, EOF, timeouts: OSError (the store maps
                    both to StoreUnavailable; a connection that failed is
                    closed, never reused: its next reply could be a stale one)

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS,
host name checked, against the system's trust store or the CA bundle named by
``?ssl_ca_certs=/path``, redis-py's name for it) and
``unix://[[user]:password@]/path/to/socket[?db=N]``: what
``policy/machine.py`` accepts. No other query parameter is understood, so an
unsupported option is an error at start rather than silently ignored.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


class RedisReplyError(Exception):
    """The server answered with an error reply (other than NOSCRIPT)."""


@dataclass(frozen=True)
class Address:
    host: str = ""
    port: int = 6379
    path: str = ""  # a unix socket
    tls: bool = False
    ca_file: str | None = None  # rediss: trust this CA bundle instead of the system's
    username: str | None = None
    password: str | None = None
    db: int = 0


def parse_url(url: str) -> Address:
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"db", "ssl_ca_certs"})
    if unknown:
        raise ValueError(f"redis url: unsupported option(s) {', '.join(unknown)}")
    ca_file = query["ssl_ca_certs"][0] if "ssl_ca_certs" in query else None
    if ca_file is not None and parts.scheme != "rediss":
        raise ValueError("redis url: ssl_ca_certs needs rediss://")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    db_text = query["db"][0] if "db" in query else ""
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("redis url: unix:// needs a socket path")
        return Address(path=parts.path, username=username, password=password, db=_db(db_text))
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis url: scheme must be redis, rediss or unix, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("redis url: no host")
    return Address(
        host=parts.hostname,
        port=parts.port or 6379,
        tls=parts.scheme == "rediss",
        ca_file=ca_file,
        username=username,
        password=password,
        db=_db(db_text or parts.path.lstrip("/")),
    )


def _db(text: str) -> int:
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"redis url: the database must be a number, not {text!r}")
    return int(text)


def _step(head: bytes, keys: list[bytes], args: list[bytes]) -> bytes:
    """EVALSHA sha | FCALL name, then numkeys, keys and args: one RESP array."""
    n = b"%d" % len(keys)
    out = [b"*%d\r\n" % (3 + len(keys) + len(args)), head, b"$%d\r\n%b\r\n" % (len(n), n)]
    for a in keys:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


def pack(*args: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class Script:
    """A Lua script known by its SHA1; loaded on a server the first time it is missing."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()
        self.head = b"$7\r\nEVALSHA\r\n$40\r\n%b\r\n" % self.sha


class NoFunctions(RedisReplyError):
    """The server cannot run the library as functions (Redis < 7, or not allowed to load it)."""


class Function:
    """A function of a Lua library, loaded (FUNCTION LOAD) the first time it is missing.

    The library's name carries a hash of its source, so hosts running different
    releases never replace each other's functions.
    """

    def __init__(self, library_source: str, name: str) -> None:
        self.source = library_source.encode()
        self.name = name.encode()
        self.head = b"$5\r\nFCALL\r\n$%d\r\n%b\r\n" % (len(self.name), self.name)


class Connection:
    """One socket to Redis, used by one thread at a time (the store keeps a stack)."""

    def __init__(self, address: Address, connect_timeout: float, op_timeout: float) -> None:
        sock: socket.socket
        if address.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(connect_timeout)
            try:
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((address.host, address.port), connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if address.tls:
                try:
                    context = ssl.create_default_context(cafile=address.ca_file)
                    sock = context.wrap_socket(sock, server_hostname=address.host)
                except BaseException:
                    sock.close()
                    raise
        self._sock = sock
        self._buf = b""
        try:
            # The handshake is bounded by connect_timeout; every step after by op_timeout.
            if address.password is not None:
                auth = [b"AUTH", address.password.encode()]
                if address.username:
                    auth.insert(1, address.username.encode())
                self._ok(self.call(pack(*auth)))
            if address.db:
                self._ok(self.call(pack(b"SELECT", b"%d" % address.db)))
            sock.settimeout(op_timeout)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ok(reply: bytes | int | None) -> None:
        if reply != b"OK":
            raise RedisReplyError(f"unexpected reply {reply!r}")

    def close(self) -> None:
        self._sock.close()

    def evalsha(self, script: Script, keys: list[bytes], args: list[bytes]) -> bytes | int | None:
        command = _step(script.head, keys, args)
        try:
            return self.call(command)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # The server forgot the script (restart, SCRIPT FLUSH): load it, run it again.
        self.call(pack(b"SCRIPT", b"LOAD", script.source))
        return self.call(command)

    def fcall(self, function: Function, keys: list[bytes], args: list[bytes]) -> bytes | int | None:
        command = _step(function.head, keys, args)
        try:
            return self.call(command)
        except RedisReplyError as exc:
            reason = str(exc)
            if reason.startswith(("ERR unknown command", "NOPERM")):
                raise NoFunctions(reason) from None
            if not reason.startswith("ERR Function not found"):
                raise
        # Not loaded yet (or lost in a restart, FUNCTION FLUSH): load the library.
        try:
            self.call(pack(b"FUNCTION", b"LOAD", function.source))
        except RedisReplyError as exc:
            if "already exists" not in str(exc):  # another host was quicker: fine
                raise NoFunctions(str(exc)) from None
        return self.call(command)

    def call(self, command: bytes) -> bytes | int | None:
        """Send one command and read its reply (bulk, integer, status or error)."""
        self._sock.sendall(command)
        return self._reply()

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self._buf += chunk

    def _reply(self) -> bytes | int | None:
        while (end := self._buf.find(b"\r\n")) < 0:
            self._fill()
        kind, line = self._buf[:1], self._buf[1:end]
        if kind == b"$":
            size = int(line)
            if size < 0:
                self._buf = self._buf[end + 2 :]
                return None
            start = end + 2
            while len(self._buf) < start + size + 2:
                self._fill()
            value = self._buf[start : start + size]
            self._buf = self._buf[start + size + 2 :]
            return value
        self._buf = self._buf[end + 2 :]
        if kind == b":":
            return int(line)
        if kind == b"+":
            return bytes(line)
        if kind == b"-":
            raise RedisReplyError(line.decode(errors="replace"))
        # Arrays and the like are never answered by the store's scripts.
        raise RedisReplyError(f"unexpected reply type {kind!r}")
