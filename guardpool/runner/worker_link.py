"""The host's end of one worker: its sockets, buffers, pidfd, cgroup, and how to kill it.

Two socketpairs per worker, one per direction (see worker/channel.py, ``Channel``): the
host writes jobs to ``jobs`` (non-blocking) and reads answers from ``sock`` (a
blocking descriptor: a waiting caller sleeps in ``recv`` on it; everyone else reads it
with ``MSG_DONTWAIT``).

Frames are ``protocol.FrameReader``'s (the same reader the worker uses). The manager
writes non-blocking with a pending-output buffer, so a large job never blocks its
thread; it asks epoll for EPOLLOUT only while output is pending.

Who reads (see dispatch.py): whoever holds ``rlock``, the manager or a caller thread
waiting in ``result()``. Only the manager creates and closes the descriptors, and only
while it holds ``rlock`` (or nobody can hold it any more), so a caller never polls a
descriptor number that has been closed and reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import sys
import termios
import threading

import msgspec

from guardpool.policy import inputs
from guardpool.policy.verdict import Verdict
from guardpool.runner.scheduler import Task
from guardpool.worker import cgroups, procfs, protocol

log = logging.getLogger("guardpool.pool")
# ext_hook: a result may carry text with a lone surrogate (policy/inputs.pack).
DECODER = msgspec.msgpack.Decoder(protocol.WorkerMsg, ext_hook=inputs.unpack_ext)
# A guard job's answer, its value decoded straight into a Verdict (half the work of a
# dict then ``msgspec.convert``). What fails this falls back to DECODER, and the
# dispatcher says what is wrong with the verdict.
GUARD_DECODER = msgspec.msgpack.Decoder(
    protocol.Ready | protocol.Done[Verdict] | protocol.Failed | protocol.Log,
    ext_hook=inputs.unpack_ext,
)
_CHUNK = 1 << 18


class WorkerLink:
    __slots__ = (
        "burying",
        "cgroup",
        "closed",
        "cpu_base",
        "doomed",
        "events",
        "fd",
        "gone",
        "jfd",
        "jobs",
        "jobs_done",
        "missed",
        "pid",
        "pidfd",
        "rbuf",
        "rcvtimeo",
        "reader",
        "ready",
        "rlock",
        "rview",
        "sock",
        "statfd",
        "task",
        "undelivered",
        "wbuf",
        "weight_lowered",
        "writing",
    )

    def __init__(
        self,
        pid: int,
        pidfd: int | None,
        jobs: socket.socket,
        answers: socket.socket,
        cgroup: cgroups.WorkerCgroup,
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.jobs = jobs
        self.jfd = jobs.fileno()
        self.sock = answers
        self.cgroup = cgroup
        self.reader = protocol.FrameReader()
        self.rbuf = bytearray(_CHUNK)  # reused: no fresh 256 KiB bytes per recv
        self.rview = memoryview(self.rbuf)
        self.wbuf = bytearray()
        # The one job this worker is running. Never more than one: a job waiting in a
        # busy worker's pipe could wait behind a hang while another worker is free.
        self.task: Task | None = None
        self.jobs_done = 0
        self.cpu_base = 0.0
        self.gone = False  # ended (died, killed or recycled); set by the manager
        self.ready = False
        self.doomed = False  # being killed at a deadline: it takes no further job
        self.burying = False  # killed; its cleanup waits for the spare (lifecycle.py)
        self.weight_lowered = False
        self.closed = False
        self.fd = answers.fileno()
        # Held by the one thread reading the socket (re-entrant: a caller that reads an
        # answer may hand the worker its next job and re-arm it in the same breath).
        self.rlock = threading.RLock()
        # The manager's epoll interest in ``fd`` as last written (-1: unknown, to be
        # written again; see lifecycle._read_worker).
        self.events = select.EPOLLIN
        # ``jfd`` is in the manager's epoll set (EPOLLOUT) while ``wbuf`` is pending. Jobs
        # have their own socket (nothing reads it on this side), so no dup is needed.
        self.writing = False
        # The receive time limit (SO_RCVTIMEO, seconds) last set on ``sock``; 0: none.
        self.rcvtimeo = 0.0
        # The manager found rlock held when it wanted the socket: the holder sends it a
        # "check" notice when it lets go (dispatch.hand_back).
        self.missed = False
        self.undelivered = False  # a job's frame could not be written at all (EPIPE)
        # Its /proc/PID/stat, opened now: read for the CPU time of a job killed at its
        # deadline, where opening the path of a dying process is slow (procfs.py).
        self.statfd = procfs.open_stat(pid)

    def write(self, data: bytes) -> bool:
        """Send what the socket takes now; True when some output is left pending."""
        if self.wbuf:
            self.wbuf += data
            return True
        try:
            sent = self.jobs.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.undelivered = True  # the worker is dying; its pidfd will report it
            return False
        if sent < len(data):
            self.wbuf += data[sent:]
            return True
        return False

    def flush(self) -> bool:
        """Send pending output; True while some is still left."""
        try:
            sent = self.jobs.send(self.wbuf, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return True
        except OSError:
            self.wbuf.clear()
            return False
        del self.wbuf[:sent]
        return bool(self.wbuf)

    def read(self) -> tuple[list[protocol.WorkerMsg], bool]:
        """The complete messages now readable, and False once the worker hung up.

        Stops after a short read rather than paying a second ``recv`` for EAGAIN:
        epoll is level-triggered, so anything left over wakes the reader again.
        """
        out: list[protocol.WorkerMsg] = []
        while True:
            try:
                n = self.sock.recv_into(self.rbuf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return out, True
            except OSError:
                return out, False
            if not n:
                return out, False
            out.extend(self.reader.decode_chunk(self.rview[:n], DECODER))
            if n < _CHUNK:
                return out, True

    def unread(self) -> bool:
        """True while the worker has not read all we sent (so its job never started)."""
        if self.wbuf or self.undelivered:
            return True
        if self.closed:
            return False
        try:
            raw = fcntl.ioctl(self.jfd, termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return False
        return int.from_bytes(raw, sys.byteorder, signed=True) > 0

    def wake_reader(self) -> None:
        """Wake a caller asleep in ``recv`` on ``sock``: the worker died or was killed,
        and a process it forked may still hold its end, so no EOF would come. (A
        shut-down socket still hands out what was sent before.) Any thread: ``sock``
        is closed only by the manager holding ``rlock``, never while it sleeps here."""
        if not self.closed:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)

    def close_fds(self) -> None:
        """Close the sockets and pidfd (manager thread, holding ``rlock``); idempotent."""
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        self.jobs.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
        if self.statfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.statfd)

    def kill(self) -> None:
        """SIGKILL the worker's process group now; the v2 cgroup kill is one write too.

        No /proc walk here: with a fork bomb running, reading /proc can take seconds.
        Processes that left the group are reached by ``kill_cgroup`` (after the verdict)
        and by the zygote, their subreaper, when they are re-parented to it.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.pidfd is not None and not self.closed:
            # Also if guard code moved the worker out of its own group (killpg missed it).
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        if self.cgroup.mode == "v2":
            cgroups.kill(self.cgroup)

    def lower_weight(self) -> None:
        """The least CPU weight for its cgroup, once: a killed worker tears down its
        address space (milliseconds of CPU) in its cgroup, and at that weight yields to
        the spare serving the next job (see lifecycle._after_kill)."""
        if not self.weight_lowered:
            self.weight_lowered = True
            cgroups.lower_weight(self.cgroup)

    def kill_cgroup(self) -> None:
        """After the verdict is out: the cgroup's CPU weight to the minimum (the dying
        worker's teardown yields to the spare), and on v1 the cgroup kill."""
        self.lower_weight()
        if self.cgroup.mode == "v1":
            leader = 0
            if self.pidfd is not None and not self.closed:
                # Again (idempotent), so that the cgroup kill knows the leader has its
                # SIGKILL pending: through the pidfd, which no reused pid can fool.
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                    leader = self.pid
            cgroups.kill(self.cgroup, leader)


# What any thread asks of the manager about a worker:
# ("ready" | "retire" | "killed" | "check" | "send" | "violation:<what>", worker)
Notice = tuple[str, WorkerLink]


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
