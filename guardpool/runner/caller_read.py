"""A caller thread reading its own job's answer: the waiting half of ``dispatch.py``.

    Future.result() ─► Dispatcher.wait_direct ─► take worker.rlock, switch the
        manager's interest off ─► _read_until: look (non-blocking reads) for
        ``look_s``, then sleep in recv (backstop SO_RCVTIMEO) or poll ─► Done for
        this task: Dispatcher._finish; anything else: Dispatcher.on_message
        ─► interest back as ``wanted`` ─► hand_back (a notice if the manager missed it)

``Dispatcher`` inherits ``CallerRead``; what these methods use of it is spelled
out in ``_Dispatcher`` (a Protocol: mypy checks the methods against it, and
there is nothing here at run time but the two methods).
"""

from __future__ import annotations

import select
import struct
from collections.abc import Callable
from os import sched_yield
from select import EPOLLIN
from socket import MSG_DONTWAIT, SO_RCVTIMEO, SOL_SOCKET
from threading import get_ident
from time import monotonic
from typing import Any, Protocol

import msgspec

from guardpool.runner.scheduler import Task
from guardpool.runner.worker_link import DECODER, GUARD_DECODER, Notice, WorkerLink
from guardpool.worker import protocol
from guardpool.worker.protocol import HEADER, Done

_frame_len = HEADER.unpack_from

# A caller asleep in recv until its job's deadline is woken by the manager's kill; its
# own receive time limit, a backstop, is set this far past the deadline, and left as
# it is while it stays within _BACKSTOP_MAX_S of the wait (see _read_until).
_BACKSTOP_S = 0.020
_BACKSTOP_MAX_S = 0.050
_TIMEVAL = struct.Struct("@ll")


def _timeval(seconds: float) -> bytes:
    return _TIMEVAL.pack(int(seconds), int(seconds % 1 * 1_000_000))


class _Dispatcher(Protocol):
    """What the reading methods use of the ``Dispatcher`` they are part of."""

    readers: set[int]
    busy: int
    cpus: int
    look_s: float
    post: Callable[[Notice], None]

    def set_read(self, worker: WorkerLink, events: int) -> None: ...

    def hand_back(self, worker: WorkerLink) -> None: ...

    def expire(self, task: Task) -> WorkerLink | None: ...

    def on_message(self, worker: WorkerLink, msg: protocol.WorkerMsg) -> str: ...

    def _finish(
        self, worker: WorkerLink, task: Task, msg: protocol.Done[Any] | protocol.Failed
    ) -> str: ...

    def _read_until(self, worker: WorkerLink, task: Task, end: float, look: float) -> None: ...


class CallerRead:
    """The methods a caller thread runs to read its own job's answer (Dispatcher's base)."""

    def wait_direct(self: _Dispatcher, task: Task, end: float) -> None:
        """Read ``task``'s answer in this (caller) thread until it comes or ``end``.

        Returns without waiting when another thread reads this worker. At the task's
        deadline the manager kills the job and wakes this thread (``expire``); should
        the manager be late past the backstop, the job is killed here.
        The common case (one whole ``Done`` frame per read, the job this thread waits
        for) is decoded and answered without the general message handling.
        """
        worker = task.worker
        if worker is None or task.answered or worker.gone:
            return
        rlock = worker.rlock
        if not rlock.acquire(False):
            return
        try:
            if worker.gone or worker.closed or worker.task is not task:
                return
            if worker.events:
                self.set_read(worker, 0)  # the answer wakes this thread, not the manager
            readers = self.readers
            ident = get_ident()
            readers.add(ident)  # set.add/discard: atomic, no lock on this path
            try:
                # Racy reads of the counts: they only decide whether to look.
                spare = len(readers) + self.busy <= self.cpus
                self._read_until(worker, task, end, self.look_s if spare else 0.0)
            finally:
                readers.discard(ident)
                if not worker.gone:
                    # The manager's interest now (``wanted``, inline: this is every call).
                    nxt = worker.task
                    want = 0 if nxt is None or (nxt.quiet and not nxt.watched) else EPOLLIN
                    if worker.events != want:
                        self.set_read(worker, want)
            if not task.answered and monotonic() >= task.deadline:
                killed = self.expire(task)
                if killed is not None:
                    self.post(("killed", killed))
        finally:
            self.hand_back(worker)

    def _read_until(
        self: _Dispatcher, worker: WorkerLink, task: Task, end: float, look: float
    ) -> None:
        sock = worker.sock
        recv_into = sock.recv_into
        rbuf = worker.rbuf
        # Waiting until the job's deadline (the usual ``result()``), this thread sleeps
        # in recv itself: the answer, the worker's death (EOF) or the manager's kill at
        # the deadline (``wake_reader``) ends it. One system call where poll + recv
        # took two. SO_RCVTIMEO is only a backstop should the manager never come: it
        # counts in ticks (5-11 ms late here), and is set only when the wait changes.
        # Waiting less (``result(timeout)``, ``wait``): poll, whose limit is exact.
        # Before it sleeps, a caller looks for its answer for ``look`` seconds
        # (non-blocking reads, yielding the CPU between them), as the worker looks for
        # its next job: on a VM an answer to a thread asleep on an idle vCPU waits for
        # the hypervisor to wake that vCPU. Only while the callers reading answers and
        # the jobs running fit the CPUs (wait_direct): two callers looking beside two
        # busy workers on two CPUs took the workers' CPUs (2 threads 33,384 -> 23,902
        # jobs/s; docs/pool.md, "Eighth pass").
        blocking = end >= task.deadline
        poller: select.poll | None = None
        look_until = monotonic() + look if blocking and look else 0.0
        while not task.answered:
            now = monotonic()
            wait = end - now
            if wait <= 0:
                return
            dead = False
            flags = 0
            if now < look_until:
                flags = MSG_DONTWAIT
            elif blocking:
                if not wait <= worker.rcvtimeo <= wait + _BACKSTOP_MAX_S:
                    timeo = wait + _BACKSTOP_S
                    sock.setsockopt(SOL_SOCKET, SO_RCVTIMEO, _timeval(timeo))
                    worker.rcvtimeo = timeo
            else:
                if poller is None:
                    poller = select.poll()
                    poller.register(worker.fd, select.POLLIN)
                    if worker.pidfd is not None:
                        poller.register(worker.pidfd, select.POLLIN)
                for efd, _ in poller.poll(wait * 1000):
                    if efd != worker.fd:
                        dead = True  # the pidfd: the worker has died
                flags = MSG_DONTWAIT
            try:
                n = recv_into(rbuf, 0, flags)
            except (BlockingIOError, InterruptedError):
                if dead:
                    return  # the manager hears it too (pidfd, Exited) and answers the job
                if flags and blocking:
                    sched_yield()  # looking: the worker may need this CPU
                continue  # nothing yet (poll's limit, or the backstop): look at the time
            except OSError:
                n = 0
            if n > 4 and n == _frame_len(rbuf)[0] + 4 and not worker.reader.buf:
                # One whole frame: by far the usual read. A guard job's answer is
                # decoded straight into its Verdict (see GUARD_DECODER).
                view = worker.rview[4:n]
                if task.guard:
                    try:
                        msg = GUARD_DECODER.decode(view)
                    except msgspec.ValidationError:
                        msg = DECODER.decode(view)  # _finish says what is wrong with it
                else:
                    msg = DECODER.decode(view)
                if type(msg) is Done and msg.id == task.id and worker.task is task:
                    if not worker.doomed:
                        action = self._finish(worker, task, msg)
                        if action:
                            self.post((action, worker))
                        return
                    continue
                msgs: list[protocol.WorkerMsg] = [msg]
                alive = True
            elif n == 0:
                msgs, alive = [], False
            else:
                msgs = worker.reader.decode_chunk(worker.rview[:n], DECODER)
                alive = True
                if n == len(rbuf):  # maybe more waiting: the general reader drains it
                    more, alive = worker.read()
                    msgs += more
            for msg in msgs:
                action = self.on_message(worker, msg)
                if action:
                    self.post((action, worker))
            if dead or not alive:
                return  # the manager hears it too (pidfd, Exited) and answers the job
