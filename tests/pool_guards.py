"""Guard and job functions for the pool tests, imported inside real worker processes.

Each one misbehaves in one specific way; the tests check the pool survives it.
"""

from __future__ import annotations

import ctypes
import encodings.idna  # noqa: F401  (socket.create_connection needs it; see PRELOAD in tests)
import hashlib
import logging
import os
import socket
import time
from typing import Any

from guardpool.policy.verdict import Verdict


def echo(value: Any) -> Any:
    return value


def double(value: int) -> int:
    return value * 2


def pid(_: Any) -> int:
    return os.getpid()


def spin(_: Any) -> None:
    while True:
        pass


def native_hang(_: Any) -> bytes:
    # One C call that never checks for signals: only a SIGKILL ends it early.
    return hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)


def burn(ms: float) -> int:
    """Use about ``ms`` of CPU time, then return this worker's pid."""
    end = time.process_time() + ms / 1000
    while time.process_time() < end:
        pass
    return os.getpid()


def child_returns(_: Any) -> int:
    """Fork a child that returns from the guard like its parent (it must never answer)."""
    os.fork()
    return os.getpid()


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def segfault(_: Any) -> None:
    ctypes.string_at(0)


def exit3(_: Any) -> None:
    os._exit(3)


def memory_bomb(_: Any) -> int:
    blocks = []
    while True:
        blocks.append(bytearray(16 << 20))
    return len(blocks)


def fork_bomb(args: list[Any]) -> None:
    """A bounded fork bomb: ``count`` sleeping descendants (a chain of forks), then hang."""
    count, pidfile = args
    for _ in range(count):
        child = os.fork()
        if child:
            with open(pidfile, "a") as f:
                f.write(f"{child}\n")
            time.sleep(60)
            os._exit(0)
    time.sleep(60)


_held: list[bytearray] = []


def hold(mb: int) -> int:
    """Keep ``mb`` MiB resident (touched) so the worker's RSS grows."""
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _held.append(block)
    return os.getpid()


def escaping_grandchild(pidfile: str) -> None:
    """Start a child in a new session (out of our process group), then hang."""
    child = os.fork()
    if child == 0:
        os.setsid()
        time.sleep(60)
        os._exit(0)
    with open(pidfile, "w") as f:
        f.write(str(child))
    time.sleep(60)


def leaves_its_group(_: Any) -> int:
    """Move the worker itself out of its own process group (into the zygote's), then
    hang: a ``killpg`` of the worker's group no longer reaches it."""
    os.setpgid(0, os.getpgid(os.getppid()))
    while True:
        pass


def raises(_: Any) -> None:
    raise ValueError("bad input from the guard's point of view")


def unserialisable(_: Any) -> object:
    return object()


def logs(message: str) -> str:
    logging.getLogger("pool_guards.logs").warning("from worker: %s", message)
    return "logged"


def connect(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return "connected"


def environment(_: Any) -> dict[str, str]:
    return dict(os.environ)


# -- callable guards (input, ctx) --------------------------------------------------------


def guard_allow(value: Any, ctx: Any) -> Verdict:
    return Verdict.allow()


def guard_context(value: Any, ctx: Any) -> Verdict:
    return Verdict.deny(f"{ctx.run_id}|{ctx.principal}|{ctx.phase}|{','.join(ctx.labels)}")


def guard_none(value: Any, ctx: Any) -> None:
    return None


def guard_bool(value: Any, ctx: Any) -> bool:
    return "bad" not in str(value)


def guard_regex(value: Any, ctx: Any) -> Verdict:
    if ctx.regex(r"AKIA[0-9A-Z]{16}").search(str(value)):
        return Verdict.deny("aws key")
    return Verdict.allow()


def guard_rewrite(value: Any, ctx: Any) -> Verdict:
    return Verdict.rewrite({"was": value, "nested": [1, 2.5, None, {"k": b"\x00"}]}, "redacted")


def guard_slow(value: Any, ctx: Any) -> Verdict:
    time.sleep(5)
    return Verdict.allow()


def guard_nested_slow(value: Any, ctx: Any) -> Verdict:
    """Calls the slow guard; its own (short) timeout must turn it into a deny."""
    started = time.monotonic()
    inner = ctx.guard("slow", value)
    took = (time.monotonic() - started) * 1000
    return Verdict.warn(f"{inner.action}:{inner.reason}:{took:.0f}:{ctx.remaining_ms():.0f}")


def guard_nested_regex(value: Any, ctx: Any) -> Verdict:
    return ctx.guard("keys", value)  # type: ignore[no-any-return]


def real_fork_bomb(_: Any) -> None:
    """Forks without end; every child forks too. Only a pids cgroup bounds it."""
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.001)


# -- return values that cannot be encoded or described ----------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ raised")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ raised")


class Opaque:
    def __str__(self) -> str:
        raise RuntimeError("__str__ raised")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ raised")


def big_int(_: Any) -> int:
    return 2**64


def self_list(_: Any) -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def opaque(_: Any) -> object:
    return Opaque()


def raises_unprintable(_: Any) -> None:
    raise Unprintable()


def surrogate(_: Any) -> str:
    return "abc\udcff"


def raises_surrogate(_: Any) -> None:
    raise ValueError("bad \udcff input")


def exits(_: Any) -> None:
    raise SystemExit(3)
