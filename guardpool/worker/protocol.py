"""Messages between the host, the zygote and the workers.

Two channels, two framings:

* **worker pipe** (one ``SOCK_STREAM`` socketpair per worker): every message is a
  4-byte big-endian length followed by a msgpack body. Stream sockets carry jobs of
  any size (up to ``max_input_bytes``) and the host writes them non-blocking.
* **zygote control socket** (``SOCK_SEQPACKET``): one msgpack message per packet, so
  a worker's socket end can ride along as ``SCM_RIGHTS`` ancillary data and the
  kernel keeps the packet boundaries for us. Its messages are all small.

The zygote's one large message, ``Setup``, travels once over its stdin.

Every message is a tagged, ``array_like`` msgspec Struct: the tag picks the type
when decoding a union, and array encoding keeps the hot path small and fast.
"""

from __future__ import annotations

import struct
from typing import Any, Generic, Literal, TypeVar

import msgspec

from guardpool.worker.cgroups import Layout, WorkerCgroup

HEADER = struct.Struct(">I")
T = TypeVar("T")


# -- host -> worker ------------------------------------------------------------------------


class CallJob(msgspec.Struct, tag=True, array_like=True, frozen=True):
    """Call ``module:function`` with ``input`` (a plain ``pool.submit``)."""

    id: int
    target: str
    input: Any
    cpu_ms: int
    deadline: float  # absolute CLOCK_MONOTONIC (shared by host and workers on one machine)


class GuardJob(msgspec.Struct, tag=True, array_like=True, frozen=True):
    """Run the compiled guard ``guard`` with a ``WorkerContext``."""

    id: int
    guard: str
    input: Any
    labels: tuple[str, ...]
    run_id: str
    principal: str
    phase: str
    deadline: float  # absolute CLOCK_MONOTONIC; nested guards share it
    cpu_ms: int


HostMsg = CallJob | GuardJob


# -- worker -> host ------------------------------------------------------------------------


class Ready(msgspec.Struct, tag=True, array_like=True, frozen=True):
    pid: int
    cpu_total_ms: float
    unreadable: list[str] = []  # sys.path entries this worker's uid cannot read


class Done(msgspec.Struct, Generic[T], tag=True, array_like=True, frozen=True):
    """A job finished; ``value`` is the function's result (a Verdict for guard jobs).

    Generic so that the host can decode a guard job's answer straight into its
    ``Verdict`` (``Done[Verdict]``, see ``runner/worker_link.py``); the bytes are the same.
    """

    id: int
    value: T
    cpu_ms: float
    cpu_total_ms: float
    rss_kb: int


FailKind = Literal["error", "memory", "expired"]  # expired: deadline passed before it started


class Failed(msgspec.Struct, tag=True, array_like=True, frozen=True):
    id: int
    error: str
    kind: FailKind
    cpu_ms: float
    cpu_total_ms: float
    rss_kb: int


class Log(msgspec.Struct, tag=True, array_like=True, frozen=True):
    """A log record from a worker, re-emitted by the host into ``logging``."""

    name: str
    level: int
    msg: str
    pathname: str
    lineno: int
    func: str
    created: float
    exc_text: str
    pid: int


WorkerMsg = Ready | Done[Any] | Failed | Log


# -- host <-> zygote -----------------------------------------------------------------------


class Setup(msgspec.Struct, tag=True, array_like=True, frozen=True):
    """Everything the zygote needs before it forks its first worker."""

    sys_path: list[str]
    preload: list[str]
    guards: bytes  # msgpack list of GuardSpec (empty: no guard jobs)
    guard_defaults: bytes  # msgpack GuardDefaults (empty: the defaults)
    memory_mb: int
    hardening: Literal["standard", "strict"]
    log_level: int
    uid: int  # workers drop to this uid/gid before any guard code; -1: keep (host not root)
    gid: int
    pids_max: int  # per-worker cgroup cap on processes (and threads)
    # After answering, look for the next job this long before sleeping; None: the
    # worker decides from the CPUs it may run on (poolsettings.idle_look_s).
    idle_poll_us: int | None


class Spawn(msgspec.Struct, tag=True, array_like=True, frozen=True):
    """Fork one worker; its socket end is attached to this packet."""

    token: int


class ZygoteReady(msgspec.Struct, tag=True, array_like=True, frozen=True):
    """Start-up done; ``error`` non-empty means a configuration that cannot work."""

    pid: int
    error: str
    cgroup: Layout = Layout("")


class Spawned(msgspec.Struct, tag=True, array_like=True, frozen=True):
    token: int
    pid: int
    error: str
    cgroup: WorkerCgroup = WorkerCgroup("", (), "")


class ForkFailed(msgspec.Struct, tag=True, array_like=True, frozen=True):
    """fork() failed (EAGAIN/ENOMEM: pids or memory exhausted); the zygote retries it."""

    token: int
    error: str
    retry_ms: float


class Exited(msgspec.Struct, tag=True, array_like=True, frozen=True):
    """A worker the zygote reaped; exactly one of exit_code / signal is set."""

    pid: int
    exit_code: int | None
    signal: int | None


ZygoteMsg = ZygoteReady | Spawned | Exited | ForkFailed


def frame(encoder: msgspec.msgpack.Encoder, msg: msgspec.Struct) -> bytes:
    """``msg`` as one length-prefixed frame for a worker pipe."""
    body = encoder.encode(msg)
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into length-prefixed frames: the one reader for both ends.

    The host feeds it whatever a non-blocking ``recv`` returned; the worker feeds it
    from a blocking one. Frames are decoded in place (no copy of the body).
    """

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, chunk: bytes | memoryview) -> None:
        self.buf += chunk

    def decode_chunk(self, chunk: memoryview, decoder: msgspec.msgpack.Decoder[T]) -> list[T]:
        """The complete frames of what was buffered plus ``chunk``; the tail is kept.

        With nothing buffered (the usual case: a read returns whole frames) they are
        decoded straight from ``chunk`` without copying it, so ``chunk`` may be a view
        of a receive buffer that is reused: decoded messages own their data.
        """
        if self.buf:
            self.buf += chunk
            return self.decode_all(decoder)
        out: list[T] = []
        pos = _decode_frames(chunk, decoder, out)
        if pos < len(chunk):
            self.buf += chunk[pos:]
        return out

    def decode_all(self, decoder: msgspec.msgpack.Decoder[T]) -> list[T]:
        """Every complete frame, decoded; an incomplete tail stays for the next feed."""
        buf = self.buf
        out: list[T] = []
        with memoryview(buf) as view:
            pos = _decode_frames(view, decoder, out)
        if pos:
            del buf[:pos]
        return out


def _decode_frames(view: memoryview, decoder: msgspec.msgpack.Decoder[T], out: list[T]) -> int:
    """Decode the complete frames at the start of ``view`` into ``out``; bytes used."""
    pos = 0
    end = len(view)
    while end - pos >= 4:
        (n,) = HEADER.unpack_from(view, pos)
        if end - pos - 4 < n:
            break
        out.append(decoder.decode(view[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return pos
