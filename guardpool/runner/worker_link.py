"""The host's end of one worker: its socket, buffers, pidfd, cgroup, and how to kill it.

Frames are ``protocol.FrameReader``'s (the same reader the worker uses). Writes are
non-blocking with a pending-output buffer, so a large job never blocks the manager
thread; the manager asks the selector for EVENT_WRITE only while output is pending.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket

import msgspec

from guardpool.policy import inputs
from guardpool.runner.scheduler import Task
from guardpool.worker import cgroups, protocol

log = logging.getLogger("guardpool.pool")
# ext_hook: a result may carry text with a lone surrogate (policy/inputs.pack).
_DECODER = msgspec.msgpack.Decoder(protocol.WorkerMsg, ext_hook=inputs.unpack_ext)


class WorkerLink:
    __slots__ = (
        "cgroup",
        "cpu_base",
        "gone",
        "jobs",
        "pid",
        "pidfd",
        "reader",
        "ready",
        "retiring",
        "sock",
        "task",
        "wbuf",
    )

    def __init__(
        self, pid: int, pidfd: int | None, sock: socket.socket, cgroup: cgroups.WorkerCgroup
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock
        self.cgroup = cgroup
        self.reader = protocol.FrameReader()
        self.wbuf = bytearray()
        # The one job this worker is running. Never more than one: a job waiting in a
        # busy worker's pipe could wait behind a hang while another worker is free.
        self.task: Task | None = None
        self.retiring = False
        self.jobs = 0
        self.cpu_base = 0.0
        self.gone = False
        self.ready = False

    def write(self, data: bytes) -> bool:
        """Send what the socket takes now; True when some output is left pending."""
        if self.wbuf:
            self.wbuf += data
            return True
        try:
            sent = self.sock.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False  # the worker is dying; its pidfd will report it
        if sent < len(data):
            self.wbuf += data[sent:]
            return True
        return False

    def flush(self) -> bool:
        """Send pending output; True while some is still left."""
        try:
            sent = self.sock.send(self.wbuf, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return True
        except OSError:
            self.wbuf.clear()
            return False
        del self.wbuf[:sent]
        return bool(self.wbuf)

    def read(self) -> tuple[list[protocol.WorkerMsg], bool]:
        """Every complete message now readable, and False once the worker hung up."""
        out: list[protocol.WorkerMsg] = []
        while True:
            try:
                chunk = self.sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                return out, True
            except OSError:
                return out, False
            if not chunk:
                return out, False
            self.reader.feed(chunk)
            out.extend(self.reader.decode_all(_DECODER))

    def kill(self) -> None:
        """SIGKILL the worker's process group now; the v2 cgroup kill is one write too.

        No /proc walk here: with a fork bomb running, reading /proc can take seconds.
        Processes that left the group are reached by ``kill_cgroup`` (after the verdict)
        and by the zygote, their subreaper, when they are re-parented to it.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.cgroup.mode == "v2":
            cgroups.kill(self.cgroup)

    def kill_cgroup(self) -> None:
        """The v1 cgroup kill (freeze, kill the members, thaw): after the verdict is out."""
        if self.cgroup.mode == "v1":
            cgroups.kill(self.cgroup)


def reemit(msg: protocol.Log) -> None:
    """A worker's log record, re-created in the host and handed to the host's handlers."""
    logger = logging.getLogger(msg.name)
    if not logger.isEnabledFor(msg.level):
        return
    record = logger.makeRecord(
        msg.name, msg.level, msg.pathname, msg.lineno, msg.msg, (), None, msg.func
    )
    record.created = msg.created
    record.msecs = (msg.created % 1) * 1000
    record.process = msg.pid
    record.processName = "guardpool-worker"
    if msg.exc_text:
        record.exc_text = msg.exc_text
    try:
        logger.handle(record)
    except Exception:  # a failing user handler must not take the pool manager down
        log.exception("guardpool: re-emitting a worker log record failed")
