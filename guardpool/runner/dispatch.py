"""The hot path: a job handed to an idle worker and its answer read, from any thread.

Data flow of one call (the common case: ``pool.submit(...).result()``)::

  caller thread                                                 worker process
  ─────────────                                                 ──────────────
  submit() ─ encode ─► place(): idle worker? ─ frame ─ jobs socketpair ─► job loop
                          │ none: queue (the next worker to free up takes it)      │
  result() ─► wait_direct(): recv, asleep until the answer, EOF or the manager's   │
              wake-up at the deadline                                              │
                 ◄───────────────────────────── answers socketpair ─ Done / Failed ◄┘
              finish(): worker back to idle (or straight to the next queued job),
                        resolve ─► JobResult
              deadline reached first: the manager's expire(): SIGKILL, verdict,
                        wake_reader(); the caller returns with the verdict

The caller writes the job and reads the answer itself, so a call costs one process
round trip, no thread hop and two system calls (send, recv), as does the worker.
The manager thread (manager.py) is not woken on this path: it learns a queued job's
deadline through ``Scheduler.inbox`` (a running job's through its worker) and sleeps
towards the earliest; it reads a worker's socket
itself whenever no caller is waiting on it (``add_done_callback``, asyncio,
``concurrent.futures.wait``) and kills at a deadline whether or not anybody waits
(a caller woken by its own backstop first kills too: ``expire`` is for any thread).

Who reads a socket is decided by the worker's ``rlock``: a waiting caller takes it
and switches the manager's epoll interest off for that socket while it waits, so the
answer wakes exactly one thread. If the manager still finds the socket readable while
the lock is held it sets ``missed`` and the caller hands the socket back with a
notice when it lets go. ``Scheduler.mutex`` covers the O(1) bookkeeping (idle
workers, busy count, which job a worker runs); it is never held across I/O.
Anything that is not O(1) (kills through a v1 cgroup, closing descriptors, asking
the zygote for a replacement) goes to the manager as a notice, off the caller's path.
"""

from __future__ import annotations

import collections
import contextlib
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from os import sched_yield
from select import EPOLLIN
from socket import MSG_DONTWAIT, MSG_NOSIGNAL, SO_RCVTIMEO, SOL_SOCKET
from threading import get_ident
from time import monotonic
from typing import Any

import msgspec

from guardpool.policy import poolsettings
from guardpool.policy.verdict import Verdict
from guardpool.runner.results import JobResult
from guardpool.runner.scheduler import Scheduler, Task
from guardpool.runner.worker_link import DECODER, GUARD_DECODER, WorkerLink, reemit
from guardpool.worker import procfs, protocol
from guardpool.worker.protocol import HEADER, Done

# Frames up to this size are written by whichever thread dispatches them (they fit
# an empty socket buffer); larger ones go through the manager's non-blocking writer.
DIRECT_MAX = 64 * 1024

# ("ready" | "retire" | "killed" | "check" | "send" | "violation:<what>", worker)
Notice = tuple[str, WorkerLink]

_frame_len = HEADER.unpack_from

# A caller asleep in recv until its job's deadline is woken by the manager's kill; its
# own receive time limit, a backstop, is set this far past the deadline, and left as
# it is while it stays within _BACKSTOP_MAX_S of the wait (see _read_until).
_BACKSTOP_S = 0.020
_BACKSTOP_MAX_S = 0.050
_TIMEVAL = struct.Struct("@ll")


def _timeval(seconds: float) -> bytes:
    return _TIMEVAL.pack(int(seconds), int(seconds % 1 * 1_000_000))


def _guard_answer(value: object, cpu_ms: float, wall_ms: float, pid: int) -> JobResult:
    """A guard job's answer that did not decode as a Verdict: converted, or an ``error``
    saying what is wrong with it."""
    try:
        verdict = msgspec.convert(value, Verdict)
    except msgspec.ValidationError as exc:
        return JobResult(
            outcome="error",
            error=f"bad verdict from worker: {exc}",
            wall_ms=wall_ms,
            worker_pid=pid,
        )
    return JobResult(outcome="ok", value=verdict, wall_ms=wall_ms, cpu_ms=cpu_ms, worker_pid=pid)


class Dispatcher:
    """Idle workers, the busy count, and the per-job work any thread may do."""

    def __init__(
        self,
        sched: Scheduler,
        n_workers: int,
        ep: select.epoll,
        post: Callable[[Notice], None],
        max_rss_kb: int,
        max_jobs: int,
        *,
        look_s: float = 0.0,
    ) -> None:
        self.sched = sched
        self.mutex = sched.mutex
        self.n_workers = n_workers  # jobs that may run at once (the spare waits)
        self.ep = ep
        self.post = post
        self.max_rss_kb = max_rss_kb
        self.max_jobs = max_jobs
        # Right end: recently used (warm); left end: fresh workers, the spare.
        self.idle: collections.deque[WorkerLink] = collections.deque()
        self.busy = 0
        self.counts = collections.Counter[str]()
        self.manager_ident = 0  # the manager thread's ident, once it runs
        self.healing = False  # the zygote is being restarted (said in timeout reasons)
        # How long a waiting caller looks for its answer before it sleeps in recv
        # (``[pool] idle_poll_us``, see _read_until), the threads reading answers now,
        # and the CPUs the lookers and the running jobs must fit in.
        self.look_s = look_s
        self.readers: set[int] = set()
        self.cpus = poolsettings.usable_cpus()

    def count(self, name: str) -> None:
        with self.mutex:
            self.counts[name] += 1

    # -- placing jobs -----------------------------------------------------------------------

    def place(self, task: Task) -> bool:
        """A new task: onto an idle worker now, else into the queue (any thread).

        True when it went to a worker (its deadline is then watched through the worker,
        not the heap).
        """
        with self.mutex:
            if self.sched.queue or self.busy >= self.n_workers or not self.idle:
                self.sched.queue.append(task)  # FIFO: nobody overtakes a waiting job
                pairs = self._match()
            else:
                # The common case, kept flat: an idle worker takes the job at once.
                worker = self.idle.pop()
                task.start_locked()  # nobody else has it yet
                task.started = True
                worker.task = task
                task.worker = worker
                self.busy += 1
                pairs = None
        if pairs is None:
            self.send(worker, task)
            return True
        for worker, job in pairs:
            self.send(worker, job)
        return task.worker is not None

    def _assign(self, worker: WorkerLink, task: Task) -> None:
        worker.task = task
        task.worker = worker
        self.busy += 1

    def _match(self) -> list[tuple[WorkerLink, Task]]:
        """Queued tasks matched with idle workers, oldest first; ``mutex`` held."""
        out: list[tuple[WorkerLink, Task]] = []
        while self.idle and self.sched.queue and self.busy < self.n_workers:
            task = self.sched.next_queued()
            if task is None:
                break
            worker = self.idle.pop()
            self._assign(worker, task)
            out.append((worker, task))
        return out

    def take_queued(self) -> list[tuple[WorkerLink, Task]]:
        """Queued tasks matched with idle workers (the caller sends them)."""
        with self.mutex:
            return self._match()

    def worker_ready(self, worker: WorkerLink) -> None:
        """A fresh worker joins the cold end of the idle list (it waits as the spare)."""
        with self.mutex:
            worker.ready = True
            if not worker.gone:
                self.idle.appendleft(worker)

    def send(self, worker: WorkerLink, task: Task) -> None:
        """Write ``task``'s frame to ``worker``: here if small, else via the manager."""
        frame = task.frame
        if len(frame) > DIRECT_MAX or get_ident() == self.manager_ident:
            self.post(("send", worker))
            return
        # Written here, read here: the manager need not watch for the answer.
        task.quiet = True
        if worker.events != (EPOLLIN if task.watched else 0):
            worker.rlock.acquire()
            try:
                if worker.events != (EPOLLIN if task.watched else 0):
                    self.set_read(worker, self.wanted(worker))
            finally:
                self.hand_back(worker)
        try:
            sent = worker.jobs.send(frame, MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The worker is dead or dying (EPIPE): its pidfd tells the manager, which
            # puts the job back in the queue, as the worker never had it.
            worker.undelivered = True
            return
        if sent < len(frame):
            self._send_rest(worker, memoryview(frame)[sent:], task.deadline)

    @staticmethod
    def wanted(worker: WorkerLink) -> int:
        """The manager's epoll interest in ``worker``'s socket when nobody waits in it.

        None while idle (an idle worker says nothing; its death shows on the pidfd)
        or running a job a caller thread wrote and will read itself.
        """
        task = worker.task
        if task is None or (task.quiet and not task.watched):
            return 0
        return select.EPOLLIN

    def hand_back(self, worker: WorkerLink) -> None:
        """Let go of ``worker.rlock`` (any thread but the manager's).

        The manager, finding the lock held, leaves a note (``missed``): it may have
        switched its interest off, or left a dead worker's descriptors open. A notice
        sends it back to the socket. Every holder but the manager lets go here: a holder
        that let go without looking left the socket unwatched (a stall to the deadline).
        """
        worker.rlock.release()
        if worker.missed or worker.gone:
            self.post(("check", worker))

    def set_read(self, worker: WorkerLink, events: int) -> None:
        """Switch the manager's interest in the socket; hold ``worker.rlock``."""
        if worker.events != events and not worker.closed:
            worker.events = events
            with contextlib.suppress(OSError):  # already unregistered: it is ending
                self.ep.modify(worker.fd, events)

    def watch(self, task: Task) -> None:
        """Someone waits for ``task`` by callback: the manager must read its answer."""
        task.watched = True
        worker = task.worker
        if task.quiet and worker is not None and not task.answered:
            self.post(("check", worker))

    def _send_rest(self, worker: WorkerLink, rest: memoryview, deadline: float) -> None:
        # A worker reads its whole job before any guard code runs, so this ends
        # quickly unless the worker dies (EPIPE) or the deadline comes (it is killed).
        poller = select.poll()
        poller.register(worker.jfd, select.POLLOUT)
        while rest:
            wait = deadline - time.monotonic()
            if wait <= 0 or not poller.poll(wait * 1000):
                return
            try:
                rest = rest[worker.jobs.send(rest, socket.MSG_NOSIGNAL) :]
            except BlockingIOError:
                continue
            except OSError:
                return

    # -- answers ----------------------------------------------------------------------------

    def wait_direct(self, task: Task, end: float) -> None:
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

    def _read_until(self, worker: WorkerLink, task: Task, end: float, look: float) -> None:
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

    def on_message(self, worker: WorkerLink, msg: protocol.WorkerMsg) -> str:
        """Handle one message, holding ``worker.rlock``; returns work for the manager."""
        if isinstance(msg, protocol.Log):
            reemit(msg)
            return ""
        if isinstance(msg, protocol.Ready):
            if worker.ready:
                return "violation:sent Ready twice"
            return "ready"  # the manager keeps the start-up bookkeeping
        if worker.doomed:
            return ""  # killed at a deadline: its job is answered already
        task = worker.task
        if task is None or task.id != msg.id:
            return f"violation:answered job {msg.id}, which it was not running"
        return self._finish(worker, task, msg)

    def _finish(
        self, worker: WorkerLink, task: Task, msg: protocol.Done[Any] | protocol.Failed
    ) -> str:
        worker.jobs_done += 1
        worker.cpu_base = msg.cpu_total_ms
        retire = msg.rss_kb > self.max_rss_kb or worker.jobs_done >= self.max_jobs
        result: JobResult | None = None
        if type(msg) is Done:
            # Built before taking the mutex: the answer is the worker's value as is (a
            # guard job's was decoded as a Verdict already, see _read_until).
            value = msg.value
            wall_ms = (monotonic() - task.submitted) * 1000
            if task.guard and type(value) is not Verdict:
                result = _guard_answer(value, msg.cpu_ms, wall_ms, worker.pid)
            else:
                result = JobResult(
                    outcome="ok",
                    value=value,
                    wall_ms=wall_ms,
                    cpu_ms=msg.cpu_ms,
                    worker_pid=worker.pid,
                )
        elif msg.kind == "memory":  # type: ignore[union-attr]
            retire = True
        # Free the worker first: the next queued job starts while this one is resolved.
        action = ""
        nxt: Task | None = None
        answered = finished = False
        sched = self.sched
        with self.mutex:
            if worker.task is task:
                worker.task = None
                if not worker.gone:
                    self.busy -= 1
            if worker.gone or worker.doomed:
                pass  # the manager is already ending it
            elif retire:
                worker.retiring = True
                action = "retire"
            elif sched.queue and self.busy < self.n_workers:
                nxt = sched.next_queued()
                if nxt is not None:
                    self._assign(worker, nxt)
                else:
                    self.idle.append(worker)
            else:
                self.idle.append(worker)
            if result is not None and not task.answered:
                # Answered in the same step (Scheduler.resolve, without a second lock).
                answered = True
                finished = sched.answer_locked(task, result)
        if nxt is not None:
            self.send(worker, nxt)
        if answered:
            sched.deliver(task, result, finished)  # type: ignore[arg-type]
        elif result is None:
            self._failed(worker, task, msg)  # type: ignore[arg-type]
        return action

    def _failed(self, worker: WorkerLink, task: Task, msg: protocol.Failed) -> None:
        if msg.kind == "expired":
            if self.sched.resolve(
                task, "timeout", error="deadline passed before the job started", limit="wall"
            ):
                self.count("timeouts")
        else:
            self.sched.resolve(
                task,
                "error",
                error=msg.error,
                limit="memory" if msg.kind == "memory" else "",
                cpu_ms=msg.cpu_ms,
                worker_pid=worker.pid,
            )

    # -- deadlines --------------------------------------------------------------------------

    def expire(self, task: Task) -> WorkerLink | None:
        """Answer a task at its deadline; a running one's worker is SIGKILLed first.

        Any thread. Returns the killed worker, which the manager must then clean up
        (v1 cgroup kill, descriptors, a replacement), or None.
        """
        with self.mutex:
            if task.answered:
                return None
            worker = task.worker
            if worker is not None and worker.doomed:
                return None  # another thread is killing it and answers the job
            running = worker is not None and worker.task is task and not worker.gone
            if running:
                assert worker is not None
                # Doomed: it takes no further job. Its slot is free at once, so the
                # next job goes to the spare now, not after the manager's cleanup.
                worker.doomed = True
                worker.task = None
                self.busy -= 1
        if not running or worker is None:
            # Never started, or its worker died a moment ago and Exited is on its way.
            why = "deadline passed before the job started"
            if self.healing:
                why += " (the pool is restarting its zygote)"
            if self.sched.resolve(task, "timeout", error=why, limit="wall"):
                self.count("timeouts")
            return None
        # Kill first, look later: the SIGKILL goes out before anything else, then the
        # verdict; only then what can wait (the cgroup write costs 0.1-0.3 ms).
        worker.kill()
        cpu_ms = procfs.stat_cpu_ms(worker.statfd) - worker.cpu_base
        if self.sched.resolve(
            task,
            "timeout",
            error=f"deadline passed; worker {worker.pid} killed",
            limit="wall",
            cpu_ms=max(cpu_ms, 0.0),
            signal=int(signal.SIGKILL),
            worker_pid=worker.pid,
        ):
            self.count("timeouts")
        # A caller asleep in recv on it (not this thread) lets go, now that the verdict
        # is there to find. (The worker's death may wake it sooner: it then waits for
        # the verdict on the job's condition.)
        worker.wake_reader()
        worker.lower_weight()
        self.count("killed")
        return worker
