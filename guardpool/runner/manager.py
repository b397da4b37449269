"""The pool's manager thread: it supervises deadlines and owns the workers' lifecycle.

Data flow::

  caller threads              manager thread (epoll)                     zygote / workers
  ──────────────              ──────────────────────                     ────────────────
  submit() ─► dispatch.place ─────────── frame ── socketpair ──────────► job loop
       └──► Scheduler.inbox ─(eventfd, only if the deadline is earlier
                               than the one the manager sleeps towards)
  result() ─► reads its answer itself (caller_read.wait_direct) ◄────────── Done/Failed
                              deadline ─► dispatch.expire: killpg, verdict
                              socket readable (nobody waiting) ─► answer ─► Future
                              pidfd readable ─► worker gone ◄── Exited(code|signal)
                              notices (retire, killed, …) ─► close, respawn
                              Spawn(+fd) ─── control socket ──► fork() (retried on EAGAIN)

The manager never polls: it sleeps in ``epoll_wait`` until a socket, a pidfd, the
zygote or the wake-up eventfd speaks, or the nearest deadline (or zygote restart)
arrives. Around it: ``dispatch.py`` (the per-job hot path any thread may run),
``lifecycle.py`` (each worker's socket, answers, birth and end) and ``healing.py``
(the zygote: start, loss, restart; broken; teardown).

Scheduling: a worker runs one job at a time and nothing waits in a busy worker's pipe,
so a job never sits behind a hang while another worker is free (no head-of-line
blocking); queued jobs go to the first worker that becomes free, oldest first. One
process more than ``workers`` is kept: the spare is forked and warm before a kill
needs it, so a replacement serves at once instead of after fork + set-up.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import msgspec

from guardpool.policy import inputs, poolsettings
from guardpool.policy.config import PoolConfig
from guardpool.runner.dispatch import Dispatcher
from guardpool.runner.healing import ZygoteSupervision
from guardpool.runner.lifecycle import WorkerLifecycle
from guardpool.runner.results import JobResult, LimitName, PoolBroken, PoolState, PoolStats
from guardpool.runner.scheduler import Scheduler, Task, encode_input, resolved
from guardpool.runner.worker_link import Notice, WorkerLink
from guardpool.runner.zygote_link import Backoff, ZygoteLink
from guardpool.worker import cgroups, protocol
from guardpool.worker.protocol import HEADER

log = logging.getLogger("guardpool.pool")

START_TIMEOUT_S = 30.0
_IN = select.EPOLLIN

MakeJob = Callable[[int, Any, int, float], "protocol.CallJob | protocol.GuardJob"]


class Manager(ZygoteSupervision, WorkerLifecycle):
    """Everything behind one pool; ``submit``/``stop``/``stats`` run in callers' threads."""

    def __init__(self, config: PoolConfig, workers: int, max_rss_mb: int, setup: protocol.Setup):
        self.config = config
        self.n_workers = workers  # jobs that may run at once
        self.n_processes = workers + 1  # plus the pre-forked spare
        self.ids = itertools.count(1)
        self.sched = Scheduler()
        self.ep = select.epoll()
        # select()ed for a timed sleep (see _run); select takes descriptors below
        # FD_SETSIZE only (a host with a thousand files open: whole milliseconds then).
        self.ep_fds = [self.ep.fileno()] if self.ep.fileno() < 1024 else []
        self.handlers: dict[int, tuple[str, WorkerLink | None]] = {}
        self.notices: collections.deque[Notice] = collections.deque()
        # When the manager will next wake by itself (monotonic); 0.0 while it is awake
        # and will look at the inbox and the notices before sleeping again.
        self.wake_at = 0.0
        self.disp = Dispatcher(
            self.sched,
            workers,
            self.ep,
            self.post,
            max_rss_mb * 1024,
            config.max_jobs_per_worker,
            look_s=poolsettings.idle_look_s(config.idle_poll_us),
        )
        self.counts = self.disp.counts
        self.by_pid: dict[int, WorkerLink] = {}
        # token -> the host's ends (jobs, answers) of a worker being forked
        self.pending_spawns: dict[int, tuple[socket.socket, socket.socket]] = {}
        self.spawn_tokens = itertools.count(1)
        self.live = 0
        self.ready_event = threading.Event()
        self.ready_count = 0
        self.failed_starts = 0
        self.stopping = False
        self.state: PoolState = "starting"
        self.broken: PoolBroken | None = None
        self.restart_at: float | None = None
        # A deadline kill's cleanup and replacement wait until this time (lifecycle.py).
        self.spawn_due: float | None = None
        self.dying: list[WorkerLink] = []  # killed at a deadline, cleanup deferred
        self.backoff = Backoff()
        self.stale_layouts: list[cgroups.Layout] = []  # dead zygotes' cgroups to remove
        self.encoder = msgspec.msgpack.Encoder()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Writers take this lock so that teardown never closes the eventfd under one
        # (a write to a closed and reused descriptor number would hit someone else's).
        self.wake_lock = threading.Lock()
        self.zygote = ZygoteLink(setup)
        self.thread = threading.Thread(target=self._run, name="guardpool-pool", daemon=True)

    @property
    def idle(self) -> collections.deque[WorkerLink]:
        return self.disp.idle

    # -- start and stop (caller thread) -----------------------------------------------------

    def start(self) -> None:
        self._register(self.wake, _IN, "wake", None)
        self._launch_zygote()
        self.thread.start()
        if not self.ready_event.wait(START_TIMEOUT_S):
            raise PoolBroken(f"workers did not become ready within {START_TIMEOUT_S:.0f} s")
        if self.broken is not None:
            raise self.broken

    def stop(self) -> None:
        self.stopping = True
        if self.thread.is_alive():
            self._wake()
            if threading.current_thread() is not self.thread:
                self.thread.join()
        elif not self.thread.ident:
            self._teardown()  # never started: only the zygote and our fds to clean

    # -- caller side (any thread) -----------------------------------------------------------

    def submit(
        self, make: MakeJob, value: Any, timeout_ms: int, cpu_ms: int, owner: object, guard: bool
    ) -> Future[JobResult]:
        now = time.monotonic()
        # The cap is the input contract's size (policy/inputs.py), as in the enforcer,
        # which passes its Measured so that a check measures once. Text and bytes (the
        # common inputs) are measured here without a call: their size is their length.
        kind = type(value)
        try:
            if kind is bytes or (kind is str and value.isascii()):
                size = len(value)
            elif isinstance(value, inputs.Measured):
                size = value.size
                value = value.value
            else:
                size = inputs.input_size(value)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:  # InputError is a ValueError
            return self._refused(f"input is not serialisable: {exc}", "", now)
        task_id = next(self.ids)
        deadline = now + timeout_ms / 1000
        try:
            # The job and its input encoded in one pass (msgspec's own encoding, as
            # encode_input's first try); what it refuses takes encode_input's slow path.
            msg = make(task_id, value, cpu_ms, deadline)
            body = self.encoder.encode(msg)
        except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
            try:
                msg = make(task_id, msgspec.Raw(encode_input(value)), cpu_ms, deadline)
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                return self._refused(f"input is not serialisable: {exc}", "", now)
            body = self.encoder.encode(msg)
        if size > self.config.max_input_bytes:
            reason = inputs.too_large(size, self.config.max_input_bytes)
            return self._refused(reason or "input too large", "input", now)
        if self.broken is not None:
            raise self.broken
        if self.stopping:
            raise RuntimeError("guardpool: pool is shut down")
        task = Task(
            self.disp, task_id, msg, HEADER.pack(len(body)) + body, deadline, now, owner, guard
        )
        if not self.disp.place(task):
            self.sched.inbox.append(task)  # queued: the manager keeps its deadline
        if deadline < self.wake_at:
            # Only a deadline earlier than the one the manager sleeps towards wakes it:
            # a stream of calls with the same timeout costs it nothing.
            self._wake()
        return task

    def _wake(self) -> None:
        with self.wake_lock:
            if self.wake >= 0:
                os.eventfd_write(self.wake, 1)

    def post(self, notice: Notice) -> None:
        """Hand work to the manager thread (any thread)."""
        self.notices.append(notice)
        if self.wake_at != 0.0 and threading.get_ident() != self.disp.manager_ident:
            self._wake()

    def _refused(self, reason: str, limit: LimitName, now: float) -> Future[JobResult]:
        self.disp.count("refused")
        wall = (time.monotonic() - now) * 1000
        return resolved(JobResult(outcome="error", error=reason, limit=limit, wall_ms=wall))

    def stats(self) -> PoolStats:
        c = self.counts
        workers = list(self.by_pid.values())
        return PoolStats(
            workers=sum(1 for w in workers if not w.gone),
            busy=self.disp.busy,
            queued=sum(1 for t in list(self.sched.queue) if not t.answered),
            spawned=c["spawned"],
            killed=c["killed"],
            crashed=c["crashed"],
            recycled=c["recycled"],
            completed=self.sched.completed,
            timeouts=c["timeouts"],
            refused=c["refused"],
            state=self.state,
            zygote_restarts=c["zygote_restarts"],
            fork_failures=c["fork_failures"],
        )

    # -- the loop ---------------------------------------------------------------------------

    def _register(self, fd: int, events: int, kind: str, obj: WorkerLink | None) -> None:
        self.ep.register(fd, events)
        self.handlers[fd] = (kind, obj)

    def _unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(fd)

    def _run(self) -> None:
        self.disp.manager_ident = threading.get_ident()
        timeout = -1.0
        try:
            while not self.stopping and self.broken is None:
                # Resolve handlers now: a descriptor closed and reused while this batch
                # is handled must not send a stale event to the new owner of its number.
                if timeout > 0.0 and self.ep_fds:
                    # epoll counts whole milliseconds, rounded up: a deadline kill came
                    # 0.2-1.1 ms late (0.6 on average). select's limit is in µs, and the
                    # epoll descriptor is readable while an event is pending.
                    select.select(self.ep_fds, (), (), timeout)
                    timeout = 0.0
                batch = [(self.handlers.get(fd), ev) for fd, ev in self.ep.poll(timeout)]
                self.wake_at = 0.0
                for handler, events in batch:
                    if handler is not None:
                        self._on_event(handler[0], handler[1], events)
                self._housekeeping()
                timeout = self._sleep_time()
        except BaseException as exc:  # a bug here must not hang every caller forever
            log.exception("guardpool: pool manager failed")
            self._break(f"pool manager failed: {exc}")
        finally:
            self.ready_event.set()
            self._teardown()

    def _on_event(self, kind: str, worker: WorkerLink | None, events: int) -> None:
        if kind == "sock" and worker is not None:
            if not self._read_worker(worker):
                self._on_gone(worker)
        elif kind == "wsock" and worker is not None:
            self._flush(worker)
        elif kind == "pidfd" and worker is not None:
            self._on_gone(worker)
        elif kind == "ctrl":
            self._on_control()
        else:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.wake)

    def _housekeeping(self) -> None:
        notices = self.notices
        while notices:
            self._on_notice(*notices.popleft())
        self.sched.take_inbox()
        self._expire()
        if self.restart_at is not None and time.monotonic() >= self.restart_at:
            self.restart_at = None
            self._launch_zygote()
        if self.spawn_due is not None and time.monotonic() >= self.spawn_due:
            self._spawn_now()
        self._dispatch()

    def _sleep_time(self) -> float:
        """Seconds until the next deadline or restart (-1: none), publishing ``wake_at``."""
        at = self.sched.next_deadline()
        for worker in self.by_pid.values():  # running jobs (most never reach the heap)
            task = worker.task
            if task is not None and not task.answered and (at is None or task.deadline < at):
                at = task.deadline
        for due in (self.restart_at, self.spawn_due):
            if due is not None:
                at = due if at is None else min(at, due)
        self.wake_at = math.inf if at is None else at
        if self.sched.inbox or self.notices:
            return 0.0  # arrived while we looked: look again before sleeping
        if at is None:
            return -1.0
        # select rounds up to the microsecond: never wake before the deadline.
        return max(0.0, at - time.monotonic())

    def _on_notice(self, kind: str, worker: WorkerLink) -> None:
        if kind == "check":
            if worker.gone:
                self._close_fds(worker)
            elif not self._read_worker(worker):
                self._on_gone(worker)
        elif kind == "killed":
            self._after_kill(worker)
        elif kind == "send":
            task = worker.task
            if task is not None and not worker.gone:
                self._send(worker, task)
        else:
            self._act(kind, worker, None)

    def _expire(self) -> None:
        now = time.monotonic()
        due = self.sched.expired(now)
        for link in list(self.by_pid.values()):
            running = link.task
            if running is not None and not running.answered and running.deadline <= now:
                due.append(running)
        for task in due:
            if task.answered:
                continue
            worker = task.worker
            if worker is not None and not worker.gone and worker.task is task:
                # An answer already in the pipe beats the deadline.
                if not self._read_worker(worker):
                    self._on_gone(worker)
                if task.answered:
                    continue
            killed = self.disp.expire(task)
            if killed is not None:
                self._after_kill(killed)

    # -- workers ----------------------------------------------------------------------------
