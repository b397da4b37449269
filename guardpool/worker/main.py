"""The worker: a forked child of the zygote that serves jobs on its own socket.

A worker is single-threaded and blocking: read one frame, run it, write the
answer. All supervision (deadlines, kills, recycling) lives in the host; the
worker only arms the kernel CPU timer around each job, because ``ITIMER_PROF``
with SIGPROF at its default disposition terminates the process even while it
is inside a C call that never returns to the interpreter.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import signal
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from guardpool.policy.verdict import normalize
from guardpool.worker import context, protocol, sandbox

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard


class Channel:
    """Blocking, length-framed reads and writes on the worker's socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.encoder = msgspec.msgpack.Encoder()

    def send(self, msg: msgspec.Struct) -> None:
        self.sock.sendall(protocol.frame(self.encoder, msg))

    def recv(self) -> bytes | None:
        """One frame body, or None at EOF (the host closed our pipe: stop)."""
        while True:
            if len(self.buf) >= 4:
                (n,) = protocol.HEADER.unpack_from(self.buf)
                if len(self.buf) >= 4 + n:
                    body = bytes(self.buf[4 : 4 + n])
                    del self.buf[: 4 + n]
                    return body
            chunk = self.sock.recv(1 << 18)
            if not chunk:
                return None
            self.buf += chunk


class ForwardingHandler(logging.Handler):
    """Sends every record to the host as a ``Log`` message over the worker's own pipe.

    No lock is shared with any other process: a worker killed mid-record can at
    worst truncate its own pipe, which the host then discards with the worker.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = ""
            if record.exc_info:
                exc_text = logging.Formatter().formatException(record.exc_info)
            self.channel.send(
                protocol.Log(
                    name=record.name,
                    level=record.levelno,
                    msg=record.getMessage(),
                    pathname=record.pathname,
                    lineno=record.lineno,
                    func=record.funcName or "",
                    created=record.created,
                    exc_text=exc_text,
                    pid=os.getpid(),
                )
            )
        except Exception:
            self.handleError(record)


def _rss_kb() -> int:
    # Peak RSS: one getrusage call (no /proc read on every job). Peak is the right
    # signal for recycling: memory a guard touched once is usually still held.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu_ms() -> float:
    return time.process_time() * 1000.0


def setup_worker(sock_fd: int, workdir: str, setup: protocol.Setup, seccomp: bool) -> socket.socket:
    """Make this freshly forked process a sandboxed worker; returns its socket."""
    # Die with the zygote (and so with the host): no orphaned worker can outlive them.
    sandbox.set_pdeathsig()
    os.setpgid(0, 0)  # own process group: one killpg takes the worker and its children
    for sig in (signal.SIGCHLD, signal.SIGPROF, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's to handle
    signal.set_wakeup_fd(-1)
    # Only fds 0-2 and the worker's socket survive: no zygote control socket, no
    # neighbour's pipe (each worker's pipe reaches exactly one worker).
    os.dup2(sock_fd, 3)
    os.closerange(4, 1 << 16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sandbox.set_workdir(workdir)
    import tempfile

    tempfile.tempdir = workdir
    sandbox.apply_rlimits(setup.memory_mb)
    sandbox.prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1)
    if seccomp:
        try:
            sandbox.install_seccomp()
        except OSError as exc:  # reported by the doctor; the other measures still hold
            sandbox.STATUS["seccomp"] = str(exc)
    sock = socket.socket(fileno=3)
    sock.setblocking(True)
    return sock


class Worker:
    def __init__(
        self,
        sock: socket.socket,
        guards: Mapping[str, CompiledGuard],
        regex_max_mem: int,
        log_level: int,
    ) -> None:
        self.channel = Channel(sock)
        self.guards = guards
        self.regex_max_mem = regex_max_mem
        self.decoder = msgspec.msgpack.Decoder(protocol.HostMsg)
        self.targets: dict[str, Callable[[Any], Any]] = {}
        root = logging.getLogger()
        for h in list(root.handlers):  # inherited from preload; output belongs to the host
            root.removeHandler(h)
        root.addHandler(ForwardingHandler(self.channel))
        root.setLevel(log_level)
        context.install_alarm_handler()

    def serve(self) -> None:
        self.channel.send(protocol.Ready(pid=os.getpid(), cpu_total_ms=_cpu_ms()))
        while True:
            body = self.channel.recv()
            if body is None:
                return
            job = self.decoder.decode(body)
            self.run(job)

    def _target(self, target: str) -> Callable[[Any], Any]:
        fn = self.targets.get(target)
        if fn is None:
            module, sep, attr = target.partition(":")
            if not sep or not module or not attr:
                raise ValueError(f"target {target!r} is not 'module:function'")
            fn = getattr(importlib.import_module(module), attr)
            self.targets[target] = fn
        return fn

    def _call(self, job: protocol.HostMsg) -> Any:
        if isinstance(job, protocol.CallJob):
            return self._target(job.target)(job.input)
        guard = self.guards.get(job.guard)
        if guard is None:
            raise LookupError(f"unknown guard {job.guard!r} (not in this pool's guard specs)")
        ctx = context.WorkerContext(
            self.guards,
            labels=job.labels,
            run_id=job.run_id,
            principal=job.principal,
            phase=job.phase,
            deadline=job.deadline,
            regex_max_mem=self.regex_max_mem,
        )
        result = guard.evaluate(job.input, ctx)
        verdict = normalize(result)
        if verdict is None:
            raise _BadReturn(f"returned {type(result).__name__}, expected Verdict or bool")
        return verdict

    def run(self, job: protocol.HostMsg) -> None:
        start = _cpu_ms()
        if time.monotonic() >= job.deadline:
            # It waited in our pipe behind a slow job and the host already answered it.
            self.channel.send(
                protocol.Failed(job.id, "deadline passed before start", "expired", 0.0, start, 0)
            )
            return
        signal.setitimer(signal.ITIMER_PROF, job.cpu_ms / 1000.0)
        error: str | None = None
        kind: protocol.FailKind = "error"
        try:
            value = self._call(job)
        except MemoryError:
            value, error, kind = None, "MemoryError: worker memory limit reached", "memory"
        except _BadReturn as exc:
            value, error = None, str(exc)
        except (Exception, context.GuardTimeout) as exc:
            value, error = None, _describe(exc)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        total = _cpu_ms()
        if error is None:
            try:
                self.channel.send(protocol.Done(job.id, value, total - start, total, _rss_kb()))
                return
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                # ValueError: a str with a lone surrogate, e.g. a rewrite of hostile text.
                error = f"result is not serialisable: {exc}"
        self.channel.send(protocol.Failed(job.id, error, kind, total - start, total, _rss_kb()))


class _BadReturn(Exception):
    pass


def _describe(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frame, enough to find the bug without a traceback."""
    text = f"{type(exc).__name__}: {exc}"
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        last = tb[-1]
        text += f" ({os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return text
