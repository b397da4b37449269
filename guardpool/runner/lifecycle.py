"""The manager's side of each worker: its socket, its answers, its birth and its end.

Data flow (manager thread only)::

  zygote Spawned(pid, cgroup) ─► _on_spawned: WorkerLink, epoll on socket + pidfd
  socket readable ─► _read_worker (unless a caller thread holds ``rlock`` and reads
                     it; see dispatch.py) ─► Dispatcher.on_message ─► _act:
        Ready ─► _on_ready: idle (the spare), start-up bookkeeping
        retire ─► _forget + _spawn (recycled: RSS, job count, MemoryError)
        violation ─► _protocol_violation: kill, crash verdict, replace
  queued jobs + idle workers ─► _dispatch ─► _send (non-blocking; the jobs socket is
                     watched for EPOLLOUT while a large job is still being written)
  deadline kill (any thread) ─► _after_kill: unwatched; SPAWN_DEFER_S later _bury
                     (v1 cgroup kill, close) and replace
  pidfd readable / EOF ─► _on_gone: last answers read, closed, replaced; the job's
                     verdict waits for the zygote's Exited (healing.py)

Descriptors are closed here only, and only while nobody polls them (``rlock``): a
caller never polls a number that was closed and reused.

A mixin of ``Manager`` (manager.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from typing import TYPE_CHECKING

from guardpool.runner.worker_link import WorkerLink
from guardpool.worker import protocol

if TYPE_CHECKING:
    import itertools

    from guardpool.runner.dispatch import Dispatcher
    from guardpool.runner.results import PoolBroken
    from guardpool.runner.scheduler import Scheduler, Task
    from guardpool.runner.zygote_link import Backoff, ZygoteLink

log = logging.getLogger("guardpool.pool")

MAX_FAILED_STARTS = 5  # workers dying before Ready, in a row: a configuration error
# How long a deadline kill's cleanup and replacement wait while the spare serves.
SPAWN_DEFER_S = 0.010
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


class WorkerLifecycle:
    # Provided by Manager.
    sched: Scheduler
    disp: Dispatcher
    ep: select.epoll
    zygote: ZygoteLink
    by_pid: dict[int, WorkerLink]
    pending_spawns: dict[int, tuple[socket.socket, socket.socket]]
    dying: list[WorkerLink]
    spawn_tokens: itertools.count[int]
    live: int
    n_processes: int
    failed_starts: int
    ready_count: int
    spawn_due: float | None
    ready_event: threading.Event
    stopping: bool
    broken: PoolBroken | None
    backoff: Backoff

    if TYPE_CHECKING:

        def _register(self, fd: int, events: int, kind: str, obj: WorkerLink | None) -> None: ...

        def _unregister(self, fd: int) -> None: ...

        def _break(self, reason: str) -> None: ...

    def _dispatch(self) -> None:
        for worker, task in self.disp.take_queued():
            self._send(worker, task)

    def _send(self, worker: WorkerLink, task: Task) -> None:
        """Manager thread: write non-blocking; the rest when the socket has room."""
        if worker.gone or worker.writing:
            return
        if self._hold(worker):
            try:
                self.disp.set_read(worker, _IN)
            finally:
                worker.rlock.release()
        if worker.write(task.frame):
            # The jobs socket is watched only while a frame is half written.
            worker.writing = True
            self._register(worker.jfd, _OUT, "wsock", worker)

    @staticmethod
    def _hold(worker: WorkerLink) -> bool:
        """Take ``worker.rlock`` or leave its holder a note (``missed``): the holder then
        sends "check" when it lets go (``Dispatcher.hand_back``). Tried again after the
        note, which a holder letting go meanwhile may not have seen."""
        if worker.rlock.acquire(False):
            return True
        worker.missed = True
        return worker.rlock.acquire(False)

    def _flush(self, worker: WorkerLink) -> None:
        if worker.gone or worker.flush():
            return
        self._unregister(worker.jfd)
        worker.writing = False

    def _read_worker(self, worker: WorkerLink) -> bool:
        """Read and handle what a worker sent, unless a caller is reading it right now.

        False once the worker hung up (EOF).
        """
        if worker.gone:
            return True
        lock = worker.rlock
        if not lock.acquire(False):
            # A caller thread is waiting on it: let it read; it hands the socket back
            # (a "check" notice) when it lets go, so nothing stays unread. Meanwhile
            # stop watching (level-triggered epoll would wake us again and again).
            worker.missed = True
            worker.events = 0
            with contextlib.suppress(OSError):
                self.ep.modify(worker.fd, 0)
            if not lock.acquire(False):
                return True
        alive = True
        try:
            if worker.missed:
                # A switch-off made without the lock (above) can cross the holder's
                # switch-on: the kernel keeps "off" while ``events`` says "on", and an
                # answer nobody else reads waits for the deadline. Written again, not
                # trusted (test_pool_channels: ..._crossed_a_callers_switch_on).
                worker.missed = False
                worker.events = -1
            if worker.closed:
                return True
            self.disp.set_read(worker, self.disp.wanted(worker))
            msgs, alive = worker.read()
            for msg in msgs:
                self._act(self.disp.on_message(worker, msg), worker, msg)
                if worker.gone:
                    break
        finally:
            lock.release()
        return alive

    def _act(self, action: str, worker: WorkerLink, msg: protocol.WorkerMsg | None) -> None:
        """Manager-thread follow-up of a message handled by ``Dispatcher.on_message``."""
        if not action:
            return
        if action == "ready":
            if isinstance(msg, protocol.Ready) and not worker.gone:
                self._on_ready(worker, msg)
        elif action == "retire":
            if not worker.gone:  # (counted in Dispatcher._finish)
                self._forget(worker)  # EOF on its pipe makes it exit cleanly
                self._spawn()
        elif action.startswith("violation:"):
            self._protocol_violation(worker, action.partition(":")[2])

    def _after_kill(self, worker: WorkerLink) -> None:
        """After a deadline kill's verdict is out: the v1 cgroup kill, close, replace.

        While ``workers`` ready workers are left (the spare idle, or already serving the
        next job), all of it waits ``SPAWN_DEFER_S``. The first job after a kill runs on
        the spare while the killed worker's address space is torn down on one CPU of the
        2-core VM this was measured on; the manager's cleanup (a cgroup read, closing
        descriptors: 0.3-0.9 ms of a CPU, and of the GIL the caller needs) and the
        replacement's fork and set-up (~10 ms of CPU, zygote and worker) took the
        other CPU from that job. Measured with ``bench/bench_pool.py --tails`` (spare
        ready): cleanup at once, fork at the spare's first answer gave p50 0.7 ms,
        p99 2.9 ms; both deferred 0.33 ms, 1.7 ms. (Forking at the first answer made
        the caller that reads it wait behind the fork.) With fewer left the pool is
        short of a worker: cleanup and replacement happen now. The SIGKILL itself
        (process group, pidfd, v2 ``cgroup.kill``) went out before the verdict
        (``Dispatcher.expire``); what waits is the v1 sweep for processes that left
        the group.
        """
        if worker.gone or worker.burying:
            return
        worker.burying = True
        # Stop hearing from it now: its death would wake the level-triggered epoll
        # again and again until it is buried.
        self._unwatch(worker)
        self.dying.append(worker)
        disp = self.disp
        if len(disp.idle) + disp.busy >= disp.n_workers:
            if self.spawn_due is None:
                self.spawn_due = time.monotonic() + SPAWN_DEFER_S
        else:
            self._spawn_now()

    def _bury(self) -> None:
        """Killed workers' cleanup, deferred by ``_after_kill``: v1 cgroup kill, close."""
        dying, self.dying = self.dying, []
        for worker in dying:
            worker.kill_cgroup()
            self._forget(worker)

    def _spawn_now(self) -> None:
        """Deferred cleanup and replacement (``_after_kill``), now."""
        self.spawn_due = None
        if self.dying:
            self._bury()
        self._spawn()

    def _spawn(self) -> None:
        while (
            self.live < self.n_processes
            and self.zygote.ready
            and not self.stopping
            and self.broken is None
        ):
            # Two socketpairs, one per direction, so that each side sleeps in a plain
            # recv (see worker/channel.py, Channel).
            jobs, child_jobs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            answers, child_answers = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            token = next(self.spawn_tokens)
            try:
                self.zygote.spawn(token, child_jobs.fileno(), child_answers.fileno())
            except OSError:
                jobs.close()
                answers.close()
                return  # the zygote is gone: EOF on its socket starts the healing
            finally:
                child_jobs.close()
                child_answers.close()
            jobs.setblocking(False)  # written with MSG_NOSIGNAL, never blocking
            answers.setblocking(True)  # a waiting caller sleeps in recv (caller_read.py)
            self.pending_spawns[token] = (jobs, answers)
            self.live += 1
            self.disp.count("spawned")

    def _on_spawned(self, msg: protocol.Spawned) -> None:
        pair = self.pending_spawns.pop(msg.token, None)
        if pair is None:
            return  # from a zygote generation we already gave up on
        if msg.error or not msg.pid:
            for sock in pair:
                sock.close()
            self.live -= 1
            log.error("guardpool: worker spawn failed: %s", msg.error)
            return
        try:
            pidfd: int | None = os.pidfd_open(msg.pid)
        except ProcessLookupError:
            pidfd = None  # already dead and reaped: its socket's EOF and Exited will tell
        worker = WorkerLink(msg.pid, pidfd, pair[0], pair[1], msg.cgroup)
        self.by_pid[msg.pid] = worker
        self._register(worker.fd, _IN, "sock", worker)
        if pidfd is not None:
            self._register(pidfd, _IN, "pidfd", worker)

    def _on_ready(self, worker: WorkerLink, msg: protocol.Ready) -> None:
        worker.cpu_base = msg.cpu_total_ms
        if msg.unreadable and not self.disp.counts["unreadable_warned"]:
            self.disp.count("unreadable_warned")
            log.warning(
                "guardpool: workers run as uid %d and cannot read %s: modules from there "
                "import only if preloaded ([pool] preload) or made readable to that user",
                self.zygote.setup.uid,
                ", ".join(msg.unreadable),
            )
        self.failed_starts = 0
        self.backoff.healthy()
        self.ready_count += 1
        if self.ready_count >= self.n_processes:
            self.ready_event.set()
        self.disp.worker_ready(worker)

    def _protocol_violation(self, worker: WorkerLink, what: str) -> None:
        """A worker that breaks the protocol is killed and replaced; the pool goes on."""
        if worker.gone:
            return
        log.error("guardpool: worker %d %s; killing it", worker.pid, what)
        worker.kill()
        task = worker.task
        if task is not None and not task.answered:
            self.disp.count("crashed")
            self.sched.resolve(
                task, "crash", error=f"worker {worker.pid} {what}", worker_pid=worker.pid
            )
        worker.kill_cgroup()
        self._forget(worker)
        self._spawn()

    def _forget(self, worker: WorkerLink) -> None:
        """Drop a worker we ended on purpose; the zygote's Exited for it is ignored."""
        self._close_worker(worker)
        self.by_pid.pop(worker.pid, None)

    def _close_worker(self, worker: WorkerLink) -> None:
        unread = worker.unread()  # before the socket closes
        worker.wake_reader()  # a caller asleep in recv on it lets go (and sends "check")
        requeue: Task | None = None
        with self.sched.mutex:
            if worker.gone:
                return
            worker.gone = True
            task = worker.task
            if task is not None:
                self.disp.busy -= 1
                if unread and not task.answered:
                    # It died before it had even read the job (a worker taken from the
                    # idle list just as its zygote died): nothing ran, so the job waits
                    # for another worker instead of being answered "crash".
                    worker.task = None
                    task.worker = None
                    self.sched.queue.appendleft(task)
                    requeue = task
            with contextlib.suppress(ValueError):
                self.disp.idle.remove(worker)
        if requeue is not None:
            self.sched.inbox.append(requeue)  # the manager keeps its deadline now
        self.live -= 1
        self._unwatch(worker)
        self._close_fds(worker)

    def _unwatch(self, worker: WorkerLink) -> None:
        """Take every descriptor of ``worker`` out of the epoll set (idempotent)."""
        self._unregister(worker.fd)
        if worker.pidfd is not None:
            self._unregister(worker.pidfd)
        if worker.writing:  # a half-written job: its dead peer makes the socket writable
            self._unregister(worker.jfd)
            worker.writing = False

    def _close_fds(self, worker: WorkerLink) -> None:
        # Never while a caller polls them (it holds rlock): it sends "check" when done.
        if self._hold(worker):
            try:
                worker.close_fds()
            finally:
                worker.rlock.release()

    def _on_gone(self, worker: WorkerLink) -> None:
        """The worker died on its own (pidfd readable or EOF); its job waits for Exited."""
        if worker.gone or worker.burying:
            return
        if worker.doomed:
            # Killed at its deadline (its job answered): died before the manager handled
            # the kill notice. Cleaned up and replaced as after any deadline kill.
            self._after_kill(worker)
            return
        self._read_worker(worker)  # a Done written just before death still counts
        if worker.gone:
            return
        self._close_worker(worker)
        if not worker.ready:
            self.failed_starts += 1
            if self.failed_starts >= MAX_FAILED_STARTS:
                self._break(
                    f"workers die before they are ready ({self.failed_starts} in a row; see stderr)"
                )
                return
        self._spawn_now()
        if worker.task is None or worker.task.answered:
            self.by_pid.pop(worker.pid, None)
