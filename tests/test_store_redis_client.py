"""The Redis store's own client (store/resp.py) against a real redis-server: URL forms,
authentication, database selection, settles from another host, forks, late replies."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from guardpool.store.base import ReserveItem
from guardpool.store.errors import StoreUnavailable
from guardpool.store.redis import RedisStore

from .conftest import RedisServer, die_with_parent, free_port

PASSWORD = "s3cret pass"  # a space: the URL form must quote it


def settings(url: str, timeout_ms: int = 1000) -> Any:
    return SimpleNamespace(
        url=url, key_prefix="t", connect_timeout_ms=timeout_ms, op_timeout_ms=timeout_ms
    )


def cost(amount: int = 250_000, key: str = "team") -> ReserveItem:
    return ReserveItem(key=key, dimension="cost", limit=10_000_000, amount=amount)


class LockedServer:
    """A redis-server with a password, on a loopback port and a unix socket."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.socket = workdir / "redis.sock"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--unixsocket", str(self.socket), "--unixsocketperm", "700"),
                *("--requirepass", PASSWORD, "--save", "", "--appendonly", "no"),
                *("--dir", str(workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
        self.client = redis.Redis(unix_socket_path=str(self.socket), password=PASSWORD)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.02)

    def keys(self, db: int) -> list[bytes]:
        self.client.execute_command("SELECT", db)
        keys: list[bytes] = self.client.keys("*")
        return keys

    def stop(self) -> None:
        self.client.close()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def locked(redis_server: RedisServer, tmp_path: Path) -> Iterator[LockedServer]:
    # redis_server: the same skip/fail rule when redis-server is missing.
    server = LockedServer(tmp_path)
    yield server
    server.stop()


def test_a_password_and_a_database_over_tcp_and_a_unix_socket(locked: LockedServer) -> None:
    quoted = PASSWORD.replace(" ", "%20")
    for url, db in (
        (f"redis://default:{quoted}@127.0.0.1:{locked.port}/2", 2),
        (f"unix://:{quoted}@{locked.socket}?db=3", 3),
    ):
        store = RedisStore(settings(url))
        assert store.reserve("a", [cost()], 60_000).ok
        assert store.states([cost()])[0].reserved == 250_000
        store.close()
        assert locked.keys(db) and not locked.keys(0)


def test_a_wrong_password_is_unavailable_with_the_servers_reason(locked: LockedServer) -> None:
    store = RedisStore(settings(f"redis://:nope@127.0.0.1:{locked.port}/0"))
    with pytest.raises(StoreUnavailable, match="budget store unavailable: redis error: WRONGPASS"):
        store.reserve("a", [cost()], 60_000)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:6379/0?ssl_cert_reqs=none", "unsupported option"),
        ("redis://127.0.0.1:6379/zero", "database must be a number"),
        ("http://127.0.0.1:6379/0", "scheme"),
        ("unix://", "socket path"),
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "needs rediss"),
    ],
)
def test_urls_the_client_cannot_honour_are_refused_at_start(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RedisStore(settings(url))


def test_a_settle_from_another_host_names_the_counts(redis_url: str) -> None:
    items = [cost(), cost(5, key="other")]
    a, b = RedisStore(settings(redis_url)), RedisStore(settings(redis_url))
    assert a.reserve("r", items, 60_000).ok
    answer = b.settle("r", {"cost": 100})
    assert answer.ok
    assert [(s.key, s.dimension, s.limit, s.used, s.reserved) for s in answer.states] == [
        ("team", "cost", 10_000_000, 100, 0),
        ("other", "cost", 10_000_000, 100, 0),
    ]
    again = b.settle("r", {"cost": 7})  # applied once; the counts are still named
    assert not again.ok and [s.used for s in again.states] == [100, 100]
    a.close()
    b.close()


def _connections(url: str) -> int:
    client = redis.Redis.from_url(url)
    n = len(client.client_list()) - 1  # not this one
    client.close()
    return n


def test_a_forked_child_never_shares_its_parents_socket(redis_url: str) -> None:
    store = RedisStore(settings(redis_url))
    assert store.reserve("parent-1", [cost()], 60_000).ok
    assert _connections(redis_url) == 1
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one step, then wait until the parent has looked
        try:
            ok = store.reserve("child", [cost()], 60_000).ok
            os.write(done_w, b"1" if ok else b"0")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(done_r, 1) == b"1"
        # The child's step went over a connection of its own: the parent's is untouched.
        assert _connections(redis_url) == 2
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
    assert store.reserve("parent-2", [cost()], 60_000).ok
    assert store.states([cost()])[0].reserved == 3 * 250_000
    store.close()


def test_a_reply_arriving_after_a_timeout_never_answers_a_later_step(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(settings(redis_url, timeout_ms=250))
    assert store.reserve("before", [cost()], 60_000).ok
    redis_server.pause()
    try:
        with pytest.raises(StoreUnavailable, match="timeout"):
            store.reserve("late", [cost()], 60_000)
    finally:
        redis_server.resume()
    # The late reserve's answer went to a closed socket. Read on the same socket, it
    # would have been taken for this read's (a different shape: the decoder refuses).
    states = store.states([cost(), cost(key="other")])
    assert [s.key for s in states] == ["team", "other"]
    assert states[0].reserved in (250_000, 500_000)  # the late one may have run
    assert states[1].reserved == 0
    store.close()


def test_a_server_that_refuses_functions_gets_the_same_steps_as_scripts(
    redis_url: str,
) -> None:
    """Redis < 7 has no FCALL, and an ACL may forbid it: the store falls back to EVALSHA."""
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command(
        "ACL",
        "SETUSER",
        "scripts",
        "reset",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-fcall",
        "-function",
    )
    admin.config_resetstat()
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    store = RedisStore(settings(f"redis://scripts:pw@{host}:{port}/0"))
    try:
        assert store.reserve("a", [cost()], 60_000).ok
        answer = store.settle("a", {"cost": 1})
        assert answer.ok and answer.states[0].used == 1
        assert store.release("a") is False
        stats = admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] >= 3
        assert "cmdstat_function|load" not in stats  # never loaded: not allowed
    finally:
        store.close()
        admin.execute_command("ACL", "DELUSER", "scripts")
        admin.close()


def test_steps_run_as_functions_where_the_server_has_them(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("FUNCTION", "FLUSH")
    admin.config_resetstat()
    store = RedisStore(settings(redis_url))
    assert store.reserve("a", [cost()], 60_000).ok
    assert store.settle("a", {}).ok
    admin.execute_command("FUNCTION", "FLUSH")  # a restarted server without persistence
    assert store.reserve("b", [cost()], 60_000).ok
    stats = admin.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] >= 3
    assert "cmdstat_evalsha" not in stats
    store.close()
    admin.close()


def _certificates(d: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for localhost / 127.0.0.1 (openssl CLI)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=guardpool test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
    )
    return d / "ca.crt", d / "server.crt", d / "server.key"


def test_tls_with_a_private_ca_and_a_refusal_without_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent(),
    )
    try:
        store = RedisStore(settings(f"rediss://localhost:{port}/0?ssl_ca_certs={ca}"))
        deadline = time.monotonic() + 10
        while True:
            try:
                assert store.reserve("a", [cost()], 60_000).ok
                break
            except StoreUnavailable:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        assert store.settle("a", {"cost": 3}).states[0].used == 3
        store.close()
        # The system's trust store does not know the private CA: refused, fail closed.
        untrusted = RedisStore(settings(f"rediss://localhost:{port}/0"))
        with pytest.raises(StoreUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            untrusted.reserve("b", [cost()], 60_000)
    finally:
        proc.kill()
        proc.wait()
