"""The hot path: a job handed to an idle worker and its answer read, from any thread.

Data flow of one call (the common case: ``pool.submit(...).result()``)::

  caller thread                                                 worker process
  ─────────────                                                 ──────────────
  submit() ─ encode ─► place(): idle worker? ─ frame ─ jobs socketpair ─► job loop
                          │ none: queue (the next worker to free up takes it)      │
  result() ─► wait_direct() (caller_read.py): recv, asleep until the answer, EOF   │
              or the manager's wake-up at the deadline                             │
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
import time
from collections.abc import Callable
from select import EPOLLIN
from socket import MSG_NOSIGNAL
from threading import get_ident
from time import monotonic
from typing import Any

import msgspec

from guardpool.policy import poolsettings
from guardpool.policy.verdict import Verdict
from guardpool.runner.caller_read import CallerRead
from guardpool.runner.results import JobResult
from guardpool.runner.scheduler import Scheduler, Task
from guardpool.runner.worker_link import Notice, WorkerLink, reemit
from guardpool.worker import procfs, protocol
from guardpool.worker.protocol import Done

# Frames up to this size are written by whichever thread dispatches them (they fit
# an empty socket buffer); larger ones go through the manager's non-blocking writer.
DIRECT_MAX = 64 * 1024


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


class Dispatcher(CallerRead):
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
        self.counts = sched.counts
        self.manager_ident = 0  # the manager thread's ident, once it runs
        self.healing = False  # the zygote is being restarted (said in timeout reasons)
        # How long a waiting caller looks for its answer before it sleeps in recv
        # (``[pool] idle_poll_us``, see caller_read._read_until), the threads reading answers now,
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
            # guard job's was decoded as a Verdict already, see caller_read._read_until).
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
            elif retire:  # out of the idle list until the manager ends it
                action = "retire"
                # Counted here, with the answer: its caller may read stats() at once.
                self.counts["recycled"] += 1
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
            self.sched.resolve(
                task,
                "timeout",
                error="deadline passed before the job started",
                limit="wall",
                count="timeouts",
            )
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
            self.sched.resolve(task, "timeout", error=why, limit="wall", count="timeouts")
            return None
        # Kill first, look later: the SIGKILL goes out before anything else, then the
        # verdict; only then what can wait (the cgroup write costs 0.1-0.3 ms). Counted
        # before the verdict: the caller it wakes may read stats() at once, and what
        # comes after resolve makes system calls that let it run (a kill missing from
        # `killed` while its timeout was counted: tests/test_pool_fastpath.py).
        worker.kill()
        self.count("killed")
        cpu_ms = procfs.stat_cpu_ms(worker.statfd) - worker.cpu_base
        self.sched.resolve(
            task,
            "timeout",
            error=f"deadline passed; worker {worker.pid} killed",
            limit="wall",
            cpu_ms=max(cpu_ms, 0.0),
            signal=int(signal.SIGKILL),
            worker_pid=worker.pid,
            count="timeouts",
        )
        # A caller asleep in recv on it (not this thread) lets go, now that the verdict
        # is there to find. (The worker's death may wake it sooner: it then waits for
        # the verdict on the job's condition.)
        worker.wake_reader()
        worker.lower_weight()
        return worker
