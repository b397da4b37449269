"""The pool's manager thread: one event loop that owns every worker, task and descriptor.

Data flow::

  caller threads          manager thread                               zygote / workers
  ──────────────          ──────────────                               ────────────────
  submit() ─► inbox ─eventfd─► selector wakes ─► scheduler: queue + deadline heap
                                 │                   │
                                 │   idle worker? ───┴─► frame ── socketpair ──► job loop
                                 │   deadline?  ──► killpg (+ cgroup.kill), verdict, respawn
  Future ◄── resolve ◄── Done/Failed/Log ◄──────────────────── socketpair ◄── answer
                     pidfd readable ─► worker gone ◄── Exited(code|signal) ◄── zygote
                     Spawn(+fd) ─────── control socket ──────► fork() (retried on EAGAIN)

The manager never polls: it sleeps in ``select`` until a socket, a pidfd, the zygote or
the wake-up fd speaks, or the nearest deadline (or zygote restart time) arrives.

Scheduling: a worker runs one job at a time and nothing waits in a busy worker's pipe,
so a job never sits behind a hang while another worker is free (no head-of-line
blocking); queued jobs go to the first worker that becomes idle, oldest first.

Healing: a zygote that dies takes its workers with it (they have PDEATHSIG). Their
jobs end as ``crash``, queued jobs wait, and a new zygote starts after a backoff; jobs
still queued at their deadline are answered ``timeout`` meanwhile. Only what cannot
heal (a configuration error reported by the zygote, workers dying before ready, a
zygote dying again and again) breaks the pool: ``PoolBroken``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import msgspec

from guardpool.policy import inputs
from guardpool.policy.config import PoolConfig
from guardpool.policy.verdict import Verdict
from guardpool.runner.results import JobResult, LimitName, PoolBroken, PoolState, PoolStats
from guardpool.runner.scheduler import Scheduler, Task, encode_input, resolved
from guardpool.runner.worker_link import WorkerLink, reemit
from guardpool.runner.zygote_link import Backoff, ZygoteLink
from guardpool.worker import cgroups, procfs, protocol

log = logging.getLogger("guardpool.pool")

START_TIMEOUT_S = 30.0
MAX_FAILED_STARTS = 5  # workers dying before Ready, in a row: a configuration error

MakeJob = Callable[[int, msgspec.Raw, int, float], "protocol.CallJob | protocol.GuardJob"]


class Manager:
    """Everything behind one pool; only ``submit``/``stop``/``stats`` run outside its thread."""

    def __init__(self, config: PoolConfig, workers: int, max_rss_mb: int, setup: protocol.Setup):
        self.config = config
        self.n_workers = workers  # jobs that may run at once
        # Processes kept: one more than that. The spare is forked and warm before a kill
        # needs it, so a replacement serves at once instead of after fork + set-up.
        self.n_processes = workers + 1
        self.max_rss_mb = max_rss_mb
        self.ids = itertools.count(1)
        self.sched = Scheduler()
        self.idle: list[WorkerLink] = []
        self.by_pid: dict[int, WorkerLink] = {}
        self.pending_spawns: dict[int, socket.socket] = {}
        self.spawn_tokens = itertools.count(1)
        self.live = 0
        self.ready_event = threading.Event()
        self.ready_count = 0
        self.wake_pending = False
        self.failed_starts = 0
        self.stopping = False
        self.state: PoolState = "starting"
        self.broken: PoolBroken | None = None
        self.restart_at: float | None = None
        self.backoff = Backoff()
        self.stale_layouts: list[cgroups.Layout] = []  # dead zygotes' cgroups to remove
        self.counts = collections.Counter[str]()
        self.encoder = msgspec.msgpack.Encoder()
        self.sel = selectors.DefaultSelector()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.zygote = ZygoteLink(setup)
        self.thread = threading.Thread(target=self._run, name="guardpool-pool", daemon=True)

    # -- start and stop (caller thread) -----------------------------------------------------

    def start(self) -> None:
        self.sel.register(self.wake, selectors.EVENT_READ, ("wake", None))
        self._launch_zygote()
        self.thread.start()
        if not self.ready_event.wait(START_TIMEOUT_S):
            raise PoolBroken(f"workers did not become ready within {START_TIMEOUT_S:.0f} s")
        if self.broken is not None:
            raise self.broken

    def stop(self) -> None:
        self.stopping = True
        if self.thread.is_alive():
            with contextlib.suppress(OSError):
                os.eventfd_write(self.wake, 1)
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
        # which passes its Measured so that a check measures once.
        try:
            size = value.size if isinstance(value, inputs.Measured) else inputs.input_size(value)
            raw = encode_input(inputs.plain(value))
        except (TypeError, ValueError, msgspec.EncodeError) as exc:  # InputError is a ValueError
            return self._refused(f"input is not serialisable: {exc}", "", now)
        too_large = inputs.too_large(size, self.config.max_input_bytes)
        if too_large is not None:
            return self._refused(too_large, "input", now)
        if self.broken is not None:
            raise self.broken
        if self.stopping:
            raise RuntimeError("guardpool: pool is shut down")
        task_id = next(self.ids)
        deadline = now + timeout_ms / 1000
        msg = make(task_id, msgspec.Raw(raw), cpu_ms, deadline)
        task = Task(task_id, msg, deadline, now, owner, guard)
        self.sched.inbox.append(task)
        if not self.wake_pending:
            # One wake-up per burst: a syscall per submit would hand the GIL to the
            # manager thread on every call of a tight submit loop.
            self.wake_pending = True
            os.eventfd_write(self.wake, 1)
        return task.future

    def _refused(self, reason: str, limit: LimitName, now: float) -> Future[JobResult]:
        self.counts["refused"] += 1
        wall = (time.monotonic() - now) * 1000
        return resolved(JobResult(outcome="error", error=reason, limit=limit, wall_ms=wall))

    def stats(self) -> PoolStats:
        c = self.counts
        workers = list(self.by_pid.values())
        return PoolStats(
            workers=sum(1 for w in workers if not w.gone),
            busy=sum(1 for w in workers if w.task is not None and not w.gone),
            queued=len(self.sched.queue) + len(self.sched.inbox),
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

    def _run(self) -> None:
        try:
            while not self.stopping and self.broken is None:
                timeout = self.sched.next_deadline()
                if self.restart_at is not None:
                    timeout = self.restart_at if timeout is None else min(timeout, self.restart_at)
                if timeout is not None:
                    timeout = max(0.0, timeout - time.monotonic())
                for key, mask in self.sel.select(timeout):
                    kind, obj = key.data
                    if kind == "sock":
                        if mask & selectors.EVENT_WRITE:
                            self._flush(obj)
                        if mask & selectors.EVENT_READ:
                            self._on_readable(obj)
                    elif kind == "pidfd":
                        self._on_gone(obj)
                    elif kind == "ctrl":
                        self._on_control()
                    else:
                        os.eventfd_read(self.wake)
                self.wake_pending = False  # before draining: a later submit wakes us again
                self.sched.take_inbox()
                self._expire()
                if self.restart_at is not None and time.monotonic() >= self.restart_at:
                    self.restart_at = None
                    self._launch_zygote()
                self._dispatch()
        except BaseException as exc:  # a bug here must not hang every caller forever
            log.exception("guardpool: pool manager failed")
            self._break(f"pool manager failed: {exc}")
        finally:
            self.ready_event.set()
            self._teardown()

    def _busy(self) -> int:
        return sum(1 for w in self.by_pid.values() if w.task is not None and not w.gone)

    def _dispatch(self) -> None:
        if not (self.idle and self.sched.queue):
            return
        room = self.n_workers - self._busy()
        while self.idle and self.sched.queue and room > 0:
            room -= 1
            task = self.sched.next_queued()
            if task is None:
                return
            worker = self.idle.pop()
            worker.task = task
            task.worker = worker
            if not task.frame:
                task.frame = protocol.frame(self.encoder, task.msg)
            if worker.write(task.frame):
                self._want_write(worker, True)

    def _expire(self) -> None:
        for task in self.sched.expired(time.monotonic()):
            worker = task.worker
            if worker is not None and not worker.gone:
                self._on_readable(worker)  # an answer already in the pipe beats the deadline
                if task.done:
                    continue
            self.counts["timeouts"] += 1
            if worker is None or worker.gone or worker.task is not task:
                # Never started, or its worker died a moment ago and Exited is on its way.
                why = "deadline passed before the job started"
                if self.state == "healing":
                    why += " (the pool is restarting its zygote)"
                self.sched.resolve(task, "timeout", error=why, limit="wall")
                continue
            # Kill first, look later: the SIGKILL goes out before anything else.
            worker.kill()
            cpu_ms = procfs.cpu_ms(worker.pid) - worker.cpu_base
            self.counts["killed"] += 1
            self.sched.resolve(
                task,
                "timeout",
                error=f"deadline passed; worker {worker.pid} killed",
                limit="wall",
                cpu_ms=max(cpu_ms, 0.0),
                signal=int(signal.SIGKILL),
                worker_pid=worker.pid,
            )
            worker.kill_cgroup()
            self._forget(worker)
            self._spawn()

    # -- zygote -----------------------------------------------------------------------------

    def _launch_zygote(self) -> None:
        try:
            ctrl = self.zygote.launch()
        except OSError as exc:  # e.g. EAGAIN from fork/exec while pids are exhausted
            log.warning("guardpool: cannot start the worker zygote: %s", exc)
            self._zygote_lost(f"cannot start: {exc}")
            return
        self.sel.register(ctrl, selectors.EVENT_READ, ("ctrl", None))

    def _on_control(self) -> None:
        msgs, alive = self.zygote.messages()
        for msg in msgs:
            if isinstance(msg, protocol.Spawned):
                self._on_spawned(msg)
            elif isinstance(msg, protocol.Exited):
                self._on_exited(msg)
            elif isinstance(msg, protocol.ForkFailed):
                self.counts["fork_failures"] += 1
                n = self.counts["fork_failures"]
                if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th ...: visible, never a flood
                    log.warning(
                        "guardpool: the zygote could not fork a worker (%s); retrying in %.0f ms"
                        " (%d failures so far)",
                        msg.error,
                        msg.retry_ms,
                        n,
                    )
            elif isinstance(msg, protocol.ZygoteReady):
                self._on_zygote_ready(msg)
        if not alive and self.zygote.ctrl is not None:
            self._zygote_lost("it exited")

    def _on_zygote_ready(self, msg: protocol.ZygoteReady) -> None:
        if msg.error:
            # Preload that does not import, guards that do not compile: no restart helps.
            self._break(f"the worker zygote failed to start: {msg.error}")
            return
        self.zygote.ready = True
        self.zygote.layout = msg.cgroup
        self._sweep_cgroups()
        if self.state in ("starting", "healing"):
            self.state = "running"
        self._spawn()

    def _sweep_cgroups(self) -> None:
        self.stale_layouts = [lay for lay in self.stale_layouts if not cgroups.remove_tree(lay)]

    def _zygote_lost(self, how: str) -> None:
        ctrl = self.zygote.ctrl
        if ctrl is not None:
            self.sel.unregister(ctrl)
        was_ready = self.zygote.ready
        status = self.zygote.close()
        layout = self.zygote.layout
        self.zygote.layout = cgroups.Layout("")
        if self.stopping or self.broken is not None:
            return
        detail = f"{how}, status {status}" if status is not None else how
        # Its workers die with it (PDEATHSIG); make sure, and answer their jobs now:
        # no Exited will come from a dead zygote.
        for worker in list(self.by_pid.values()):
            if not worker.gone:
                worker.kill()
                worker.kill_cgroup()
            task = worker.task
            if task is not None and not task.done:
                self.counts["crashed"] += 1
                self.sched.resolve(
                    task,
                    "crash",
                    error=f"the worker zygote died ({detail}); worker {worker.pid} died with it",
                    worker_pid=worker.pid,
                )
            self._forget(worker)
        for sock in self.pending_spawns.values():
            sock.close()
        self.pending_spawns.clear()
        self.live = 0
        # The dead zygote cannot remove its cgroups: we do, now or on a later turn.
        self.stale_layouts.append(layout)
        self._sweep_cgroups()
        wait = self.backoff.lost()
        if wait is None:
            self._break(
                f"the worker zygote died {self.backoff.losses} times in a row, last: {detail}"
            )
            return
        self.counts["zygote_restarts"] += 1
        self.state = "healing"
        self.restart_at = time.monotonic() + wait
        log.error(
            "guardpool: the worker zygote died (%s)%s; restarting it in %.0f ms",
            detail,
            "" if was_ready else " before it was ready",
            wait * 1000,
        )

    # -- workers ----------------------------------------------------------------------------

    def _spawn(self) -> None:
        while (
            self.live < self.n_processes
            and self.zygote.ready
            and not self.stopping
            and self.broken is None
        ):
            host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            token = next(self.spawn_tokens)
            try:
                self.zygote.spawn(token, child.fileno())
            except OSError:
                host.close()
                return  # the zygote is gone: EOF on its socket starts the healing
            finally:
                child.close()
            host.setblocking(False)
            self.pending_spawns[token] = host
            self.live += 1
            self.counts["spawned"] += 1

    def _on_spawned(self, msg: protocol.Spawned) -> None:
        sock = self.pending_spawns.pop(msg.token, None)
        if sock is None:
            return  # from a zygote generation we already gave up on
        if msg.error or not msg.pid:
            sock.close()
            self.live -= 1
            log.error("guardpool: worker spawn failed: %s", msg.error)
            return
        try:
            pidfd: int | None = os.pidfd_open(msg.pid)
        except ProcessLookupError:
            pidfd = None  # already dead and reaped: its socket's EOF and Exited will tell
        worker = WorkerLink(msg.pid, pidfd, sock, msg.cgroup)
        self.by_pid[msg.pid] = worker
        self.sel.register(sock, selectors.EVENT_READ, ("sock", worker))
        if pidfd is not None:
            self.sel.register(pidfd, selectors.EVENT_READ, ("pidfd", worker))

    def _want_write(self, worker: WorkerLink, on: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.sel.modify(worker.sock, events, ("sock", worker))

    def _flush(self, worker: WorkerLink) -> None:
        if not worker.flush() and not worker.gone:
            self._want_write(worker, False)

    def _on_readable(self, worker: WorkerLink) -> None:
        if worker.gone:
            return
        msgs, alive = worker.read()
        for msg in msgs:
            self._on_message(worker, msg)
            if worker.gone:
                return
        if not alive:
            self._on_gone(worker)

    def _on_message(self, worker: WorkerLink, msg: protocol.WorkerMsg) -> None:
        if isinstance(msg, protocol.Log):
            reemit(msg)
            return
        if isinstance(msg, protocol.Ready):
            worker.cpu_base = msg.cpu_total_ms
            worker.ready = True
            if msg.unreadable and not self.counts["unreadable_warned"]:
                self.counts["unreadable_warned"] = 1
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
            if not worker.gone:
                # Fresh workers go to the cold end: jobs go to the most recently used
                # (warm caches), and a fresh one waits as the spare.
                self.idle.insert(0, worker)
            return
        task = worker.task
        if task is None or task.id != msg.id:
            self._protocol_violation(worker, f"answered job {msg.id}, which it was not running")
            return
        worker.task = None
        worker.jobs += 1
        worker.cpu_base = msg.cpu_total_ms
        if msg.rss_kb > self.max_rss_mb * 1024:
            worker.retiring = True
        if isinstance(msg, protocol.Done):
            self._done(task, msg, worker)
        elif msg.kind == "expired":
            if not task.done:
                self.counts["timeouts"] += 1
            self.sched.resolve(
                task, "timeout", error="deadline passed before the job started", limit="wall"
            )
        else:
            if msg.kind == "memory":
                worker.retiring = True  # a heap that hit RLIMIT_AS is not worth keeping
            self.sched.resolve(
                task,
                "error",
                error=msg.error,
                limit="memory" if msg.kind == "memory" else "",
                cpu_ms=msg.cpu_ms,
                worker_pid=worker.pid,
            )
        if worker.gone:
            return
        if worker.retiring or worker.jobs >= self.config.max_jobs_per_worker:
            self.counts["recycled"] += 1
            self._forget(worker)  # EOF on its pipe makes it exit cleanly
            self._spawn()
        else:
            self.idle.append(worker)

    def _protocol_violation(self, worker: WorkerLink, what: str) -> None:
        """A worker that breaks the protocol is killed and replaced; the pool goes on."""
        log.error("guardpool: worker %d %s; killing it", worker.pid, what)
        worker.kill()
        if worker.task is not None:
            self.counts["crashed"] += 1
            self.sched.resolve(
                worker.task, "crash", error=f"worker {worker.pid} {what}", worker_pid=worker.pid
            )
        worker.kill_cgroup()
        self._forget(worker)
        self._spawn()

    def _done(self, task: Task, msg: protocol.Done, worker: WorkerLink) -> None:
        value = msg.value
        if task.guard:
            try:
                value = msgspec.convert(value, Verdict)
            except msgspec.ValidationError as exc:
                self.sched.resolve(
                    task, "error", error=f"bad verdict from worker: {exc}", worker_pid=worker.pid
                )
                return
        self.sched.resolve(task, "ok", value=value, cpu_ms=msg.cpu_ms, worker_pid=worker.pid)

    def _forget(self, worker: WorkerLink) -> None:
        """Drop a worker we ended on purpose; the zygote's Exited for it is ignored."""
        self._close_worker(worker)
        self.by_pid.pop(worker.pid, None)

    def _close_worker(self, worker: WorkerLink) -> None:
        if worker.gone:
            return
        worker.gone = True
        self.live -= 1
        if worker in self.idle:
            self.idle.remove(worker)
        self.sel.unregister(worker.sock)
        worker.sock.close()
        if worker.pidfd is not None:
            self.sel.unregister(worker.pidfd)
            os.close(worker.pidfd)

    def _on_gone(self, worker: WorkerLink) -> None:
        """The worker died on its own (pidfd readable or EOF); its job waits for Exited."""
        if worker.gone:
            return
        msgs, _alive = worker.read()  # a Done written just before death still counts
        for msg in msgs:
            self._on_message(worker, msg)
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
        self._spawn()
        if worker.task is None or worker.task.done:
            self.by_pid.pop(worker.pid, None)

    def _on_exited(self, msg: protocol.Exited) -> None:
        worker = self.by_pid.pop(msg.pid, None)
        if worker is None:
            return
        self._on_gone(worker)
        task = worker.task
        if task is None or task.done:
            return
        if msg.signal == signal.SIGPROF:
            self.counts["timeouts"] += 1
            self.sched.resolve(
                task,
                "timeout",
                error=f"CPU budget of {task.msg.cpu_ms} ms used up; worker {msg.pid} killed",
                limit="cpu",
                cpu_ms=float(task.msg.cpu_ms),
                signal=msg.signal,
                worker_pid=worker.pid,
            )
            return
        self.counts["crashed"] += 1
        how = f"signal {msg.signal}" if msg.signal is not None else f"exit code {msg.exit_code}"
        self.sched.resolve(
            task,
            "crash",
            error=f"worker {msg.pid} died during the job ({how})",
            exit_code=msg.exit_code,
            signal=msg.signal,
            worker_pid=worker.pid,
        )

    # -- broken and teardown ----------------------------------------------------------------

    def _break(self, reason: str) -> None:
        if self.broken is not None:
            return
        self.broken = PoolBroken(reason)
        self.state = "broken"
        log.error("%s", self.broken)
        for worker in list(self.by_pid.values()):
            if worker.task is not None:
                self.sched.fail(worker.task, self.broken)
        for task in self.sched.pending():
            self.sched.fail(task, self.broken)
        self.ready_event.set()

    def _teardown(self) -> None:
        for task in [*self.sched.pending(), *self.sched.inbox]:
            self.sched.resolve(task, "error", error="pool shut down")
        self.sched.clear()
        for worker in list(self.by_pid.values()):
            if worker.task is not None:
                self.sched.resolve(worker.task, "error", error="pool shut down")
            if not worker.gone:
                worker.kill()
            self._forget(worker)
        for sock in self.pending_spawns.values():
            sock.close()
        self.pending_spawns.clear()
        # EOF on the control socket: the zygote kills whatever is left, reaps and exits.
        if self.zygote.ctrl is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.zygote.ctrl)
        self.zygote.close()
        for _ in range(50):  # members of a dead zygote's cgroups may still be dying
            self._sweep_cgroups()
            if not self.stale_layouts:
                break
            time.sleep(0.01)
        self.sel.close()
        with contextlib.suppress(OSError):
            os.close(self.wake)
        if self.state != "broken":
            self.state = "stopped"
