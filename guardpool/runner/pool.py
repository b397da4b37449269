"""``GuardPool``: sandboxed, killable worker processes for guard code.

Data flow::

  caller threads             manager thread (one per pool)            zygote              workers
  ──────────────             ─────────────────────────────            ──────              ───────
  submit() ──► encode input,                                         (clean interpreter,
               size check ──► inbox ──eventfd──► selector wakes       no threads)
                                                 │
                                   task queue ◄──┘  deadline heap
                                       │              │
                                       ▼              ▼ (select timeout = nearest deadline)
                                 idle worker?    deadline passed?
                                       │              ├─ queued:  resolve "timeout"
                                       │              └─ running: killpg(SIGKILL) + escapees,
                                       │                          resolve "timeout", respawn
                                       ▼
                           framed CallJob/GuardJob ──── socketpair ───────────────► job loop
  Future.result() ◄── resolve ◄── Done/Failed/Log ◄──── socketpair ◄─────────────── (ITIMER_PROF)
                                                 │
                       pidfd readable ──► crash? ◄── Exited(code|signal) ◄── waitpid
                       Spawn(+fd via SCM_RIGHTS) ──── control socket ──► fork() ─► new worker

One thread owns every worker, task and file descriptor, so there are no locks
around pool state: callers only append to a deque and poke an eventfd. The
manager never polls or sleeps; it sleeps in ``select`` until a socket, a pidfd,
the zygote or the wake-up fd speaks, or the nearest deadline arrives.

Deadlines are absolute from ``submit``. A job still queued at its deadline
resolves without running; a running one has its worker's process group
SIGKILLed at once, which works whatever the worker is doing (even a C call that
ignores signals). The CPU budget is the kernel's: ``ITIMER_PROF`` in the worker,
SIGPROF at its default (terminating) disposition.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from guardpool.policy.verdict import Verdict
from guardpool.worker import protocol

if TYPE_CHECKING:
    from guardpool.policy.config import Config, GuardDefaults, GuardSpec, PoolConfig
    from guardpool.policy.loader import Policy

log = logging.getLogger("guardpool.pool")

Outcome = Literal["ok", "timeout", "error", "crash"]
LimitName = Literal["", "wall", "cpu", "memory", "input"]
Hardening = Literal["standard", "strict"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Jobs in flight per worker when every worker is busy: the next job is already in the
# worker's pipe when it finishes one, so it never waits a round trip for work. Only a
# never-started job can sit behind a running one, so a kill or crash requeues it
# without running anything twice.
PIPELINE = 2
_START_TIMEOUT_S = 30.0


class JobResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one job ended. ``value`` is the function's result (a ``Verdict`` for guard jobs)."""

    outcome: Outcome
    value: Any = None
    error: str = ""
    limit: LimitName = ""
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    worker_pid: int = 0


class PoolStats(msgspec.Struct, frozen=True, kw_only=True):
    workers: int  # live workers (spawned and not yet dead)
    busy: int
    queued: int
    spawned: int
    killed: int  # killed by the pool at a deadline
    crashed: int
    recycled: int
    completed: int
    timeouts: int
    refused: int  # input too large / not serialisable


class _Task:
    __slots__ = (
        "deadline",
        "done",
        "frame",
        "future",
        "guard",
        "id",
        "msg",
        "started",
        "submitted",
        "worker",
    )

    def __init__(
        self,
        task_id: int,
        msg: protocol.CallJob | protocol.GuardJob,
        deadline: float,
        submitted: float,
    ) -> None:
        self.id = task_id
        self.msg = msg
        self.future: Future[JobResult] = Future()
        self.deadline = deadline
        self.submitted = submitted
        self.guard = isinstance(msg, protocol.GuardJob)
        self.worker: _Worker | None = None
        self.frame = b""
        self.started = False
        self.done = False


class _Worker:
    __slots__ = (
        "cpu_base",
        "gone",
        "jobs",
        "pid",
        "pidfd",
        "rbuf",
        "ready",
        "retiring",
        "sock",
        "tasks",
        "wbuf",
    )

    def __init__(self, pid: int, pidfd: int | None, sock: socket.socket) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        # In flight, in the order sent. The worker answers in order, so tasks[0] is the
        # one running; any after it were never started (see PIPELINE).
        self.tasks: collections.deque[_Task] = collections.deque()
        self.retiring = False
        self.jobs = 0
        self.cpu_base = 0.0
        self.gone = False
        self.ready = False


class _Limits(msgspec.Struct, frozen=True):
    workers: int
    job_timeout_ms: int
    job_cpu_ms: int
    memory_mb: int
    max_rss_mb: int
    max_jobs_per_worker: int
    max_input_bytes: int
    preload: tuple[str, ...]
    hardening: Hardening
    import_path: tuple[str, ...] = ()  # put before sys.path in the zygote (guard modules)


_local = threading.local()


def _encoder() -> msgspec.msgpack.Encoder:
    """One encoder per calling thread: encoding happens in the submitting thread."""
    enc: msgspec.msgpack.Encoder | None = getattr(_local, "encoder", None)
    if enc is None:
        enc = _local.encoder = msgspec.msgpack.Encoder()
    return enc


class _Manager:
    """Everything behind one pool; only ``submit``/``stop`` run outside the manager thread."""

    def __init__(
        self, limits: _Limits, guards: bytes, guard_defaults: bytes, timeouts: dict[str, int]
    ) -> None:
        self.limits = limits
        self.guard_timeouts = timeouts
        self.ids = itertools.count(1)
        self.inbox: collections.deque[_Task] = collections.deque()
        self.queue: collections.deque[_Task] = collections.deque()
        self.heap: list[tuple[float, int, _Task]] = []
        self.idle: list[_Worker] = []
        self.by_pid: dict[int, _Worker] = {}
        self.pending_spawns: dict[int, socket.socket] = {}
        self.spawn_tokens = itertools.count(1)
        self.live = 0
        self.ready_event = threading.Event()
        self.ready_count = 0
        self.wake_pending = False
        self.failed_starts = 0
        self.stopping = False
        self.broken = ""
        self.counts = collections.Counter[str]()
        self.encoder = msgspec.msgpack.Encoder()
        self.worker_decoder = msgspec.msgpack.Decoder(protocol.WorkerMsg)
        self.zygote_decoder = msgspec.msgpack.Decoder(protocol.ZygoteMsg)
        self.sel = selectors.DefaultSelector()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ctrl, child_ctrl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.thread = threading.Thread(target=self._run, name="guardpool-pool", daemon=True)
        self.zygote = self._start_zygote(child_ctrl, guards, guard_defaults)
        _live_managers.add(self)

    # -- start-up ---------------------------------------------------------------------------

    def _start_zygote(
        self, child_ctrl: socket.socket, guards: bytes, guard_defaults: bytes
    ) -> subprocess.Popen[bytes]:
        cwd = os.getcwd()
        sys_path = [*self.limits.import_path, *(p or cwd for p in sys.path)]
        setup = protocol.Setup(
            sys_path=sys_path,
            preload=list(self.limits.preload),
            guards=guards,
            guard_defaults=guard_defaults,
            memory_mb=self.limits.memory_mb,
            hardening=self.limits.hardening,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys_path))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "guardpool.worker.zygote", str(child_ctrl.fileno())],
                stdin=subprocess.PIPE,
                stdout=sys.__stderr__.fileno() if sys.__stderr__ else subprocess.DEVNULL,
                pass_fds=(child_ctrl.fileno(),),
                env=env,
            )
        finally:
            child_ctrl.close()
        assert proc.stdin is not None
        proc.stdin.write(msgspec.msgpack.encode(setup))
        proc.stdin.close()
        self.ctrl.settimeout(_START_TIMEOUT_S)
        try:
            data = self.ctrl.recv(1 << 16)
        except TimeoutError:
            data = b""
        if not data:
            _stop_process(proc)
            self._close_fds()
            raise RuntimeError("guardpool: the worker zygote did not start (see stderr)")
        ready = self.zygote_decoder.decode(data)
        if not isinstance(ready, protocol.ZygoteReady) or ready.error:
            _stop_process(proc)
            self._close_fds()
            detail = ready.error if isinstance(ready, protocol.ZygoteReady) else repr(ready)
            raise RuntimeError(f"guardpool: the worker zygote failed to start: {detail}")
        self.ctrl.setblocking(False)
        return proc

    def start(self) -> None:
        self.sel.register(self.wake, selectors.EVENT_READ, ("wake", None))
        self.sel.register(self.ctrl, selectors.EVENT_READ, ("ctrl", None))
        self._spawn()
        self.thread.start()
        if not self.ready_event.wait(_START_TIMEOUT_S):
            raise RuntimeError("guardpool: workers did not become ready in time")
        if self.broken:
            raise RuntimeError(f"guardpool: {self.broken}")

    # -- caller side (any thread) -----------------------------------------------------------

    def submit(
        self,
        make: Any,
        value: Any,
        timeout_ms: int,
        cpu_ms: int,
    ) -> Future[JobResult]:
        now = time.monotonic()
        task_id = next(self.ids)
        try:
            raw = _encoder().encode(value)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            # ValueError: UnicodeEncodeError on a lone surrogate in hostile text.
            return self._refused(f"input is not serialisable: {exc}", "", now)
        if len(raw) > self.limits.max_input_bytes:
            return self._refused(
                f"input is {len(raw)} bytes encoded, over max_input_bytes "
                f"({self.limits.max_input_bytes})",
                "input",
                now,
            )
        deadline = now + timeout_ms / 1000
        task = _Task(task_id, make(task_id, msgspec.Raw(raw), cpu_ms, deadline), deadline, now)
        if self.stopping or self.broken:
            raise RuntimeError(f"guardpool: pool is {'shut down' if self.stopping else 'broken'}")
        self.inbox.append(task)
        if not self.wake_pending:
            # One wake-up per burst: a syscall per submit would hand the GIL to the
            # manager thread on every call of a tight submit loop.
            self.wake_pending = True
            os.eventfd_write(self.wake, 1)
        return task.future

    def _refused(self, reason: str, limit: LimitName, now: float) -> Future[JobResult]:
        self.counts["refused"] += 1
        fut: Future[JobResult] = Future()
        fut.set_running_or_notify_cancel()
        fut.set_result(
            JobResult(
                outcome="error",
                error=reason,
                limit=limit,
                wall_ms=(time.monotonic() - now) * 1000,
            )
        )
        return fut

    def stop(self) -> None:
        self.stopping = True
        if self.thread.is_alive():
            with contextlib.suppress(OSError):
                os.eventfd_write(self.wake, 1)
            if threading.current_thread() is not self.thread:
                self.thread.join()
        elif not self.thread.ident:
            self._teardown()  # never started: only the zygote and our fds to clean

    # -- manager thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stopping:
                timeout = None
                while self.heap and self.heap[0][2].done:
                    heapq.heappop(self.heap)
                if self.heap:
                    timeout = max(0.0, self.heap[0][0] - time.monotonic())
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
                self._take_inbox()
                self._expire()
                self._dispatch()
        except BaseException as exc:  # a bug here must not hang every caller forever
            log.exception("guardpool: pool manager failed")
            self.broken = f"pool manager failed: {exc}"
        finally:
            self.ready_event.set()
            self._teardown()

    def _take_inbox(self) -> None:
        while self.inbox:
            task = self.inbox.popleft()
            self.queue.append(task)
            heapq.heappush(self.heap, (task.deadline, task.id, task))

    def _dispatch(self) -> None:
        while self.queue:
            task = self.queue[0]
            if task.done:
                self.queue.popleft()
                continue
            worker = self._free_worker()
            if worker is None:
                return
            self.queue.popleft()
            if not task.started:
                if not task.future.set_running_or_notify_cancel():
                    task.done = True  # cancelled by the caller while queued
                    if not worker.tasks:
                        self.idle.append(worker)
                    continue
                task.started = True
            worker.tasks.append(task)
            task.worker = worker
            self._write(worker, task.frame or self._frame(task))

    def _frame(self, task: _Task) -> bytes:
        task.frame = protocol.frame(self.encoder, task.msg)
        return task.frame

    def _free_worker(self) -> _Worker | None:
        """An idle worker, else one with room in its pipeline (nothing is retiring)."""
        if self.idle:
            return self.idle.pop()
        best: _Worker | None = None
        for worker in self.by_pid.values():
            if (
                worker.gone
                or worker.retiring
                or not worker.ready
                or len(worker.tasks) >= PIPELINE
                # it retires after its current jobs: nothing may wait behind them
                or worker.jobs + len(worker.tasks) >= self.limits.max_jobs_per_worker
            ):
                continue
            if best is None or len(worker.tasks) < len(best.tasks):
                best = worker
        return best

    def _expire(self) -> None:
        now = time.monotonic()
        while self.heap and (self.heap[0][0] <= now or self.heap[0][2].done):
            _deadline, _id, task = heapq.heappop(self.heap)
            if task.done:
                continue
            worker = task.worker
            if worker is not None and not worker.gone:
                self._drain(worker)  # an answer already in the pipe beats the deadline
                if task.done:
                    continue
            self.counts["timeouts"] += 1
            if worker is None or worker.gone or worker.tasks[0] is not task:
                # Never started (queued here, or waiting in a busy worker's pipe: the
                # worker skips it when it sees the deadline passed), or its worker died
                # a moment ago and Exited is on its way.
                self._resolve(
                    task, "timeout", error="deadline passed before the job started", limit="wall"
                )
                continue
            cpu_ms = _cpu_ms_of(worker.pid) - worker.cpu_base
            self._kill(worker)
            self.counts["killed"] += 1
            self._resolve(
                task,
                "timeout",
                error=f"deadline passed; worker {worker.pid} killed",
                limit="wall",
                cpu_ms=max(cpu_ms, 0.0),
                signal=int(signal.SIGKILL),
                worker=worker,
            )

    def _resolve(
        self,
        task: _Task,
        outcome: Outcome,
        *,
        value: Any = None,
        error: str = "",
        limit: LimitName = "",
        cpu_ms: float = 0.0,
        exit_code: int | None = None,
        signal: int | None = None,
        worker: _Worker | None = None,
    ) -> None:
        if task.done:
            return
        task.done = True
        if not task.started and not task.future.set_running_or_notify_cancel():
            return
        self.counts["completed"] += 1
        task.future.set_result(
            JobResult(
                outcome=outcome,
                value=value,
                error=error,
                limit=limit,
                wall_ms=(time.monotonic() - task.submitted) * 1000,
                cpu_ms=cpu_ms,
                exit_code=exit_code,
                signal=signal,
                worker_pid=worker.pid if worker is not None else 0,
            )
        )

    # -- workers ----------------------------------------------------------------------------

    def _spawn(self) -> None:
        while self.live < self.limits.workers and not self.stopping and not self.broken:
            host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            token = next(self.spawn_tokens)
            try:
                socket.send_fds(
                    self.ctrl, [self.encoder.encode(protocol.Spawn(token))], [child.fileno()]
                )
            except OSError as exc:
                host.close()
                self.broken = f"cannot reach the worker zygote: {exc}"
                return
            finally:
                child.close()
            host.setblocking(False)
            self.pending_spawns[token] = host
            self.live += 1
            self.counts["spawned"] += 1

    def _on_control(self) -> None:
        while True:
            try:
                data = self.ctrl.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self._zygote_lost()
                return
            msg = self.zygote_decoder.decode(data)
            if isinstance(msg, protocol.Spawned):
                self._on_spawned(msg)
            elif isinstance(msg, protocol.Exited):
                self._on_exited(msg)

    def _zygote_lost(self) -> None:
        self.broken = "the worker zygote died"
        self.sel.unregister(self.ctrl)
        log.error("guardpool: %s; failing all jobs", self.broken)
        for task in [*self.queue, *(t for w in self.by_pid.values() for t in w.tasks)]:
            self._resolve(task, "crash", error=self.broken)
        self.ready_event.set()

    def _on_spawned(self, msg: protocol.Spawned) -> None:
        sock = self.pending_spawns.pop(msg.token)
        if msg.error or not msg.pid:
            sock.close()
            self.live -= 1
            log.error("guardpool: worker spawn failed: %s", msg.error)
            return
        try:
            pidfd: int | None = os.pidfd_open(msg.pid)
        except ProcessLookupError:
            pidfd = None  # already dead and reaped: its socket's EOF and Exited will tell
        worker = _Worker(msg.pid, pidfd, sock)
        self.by_pid[msg.pid] = worker
        self.sel.register(sock, selectors.EVENT_READ, ("sock", worker))
        if pidfd is not None:
            self.sel.register(pidfd, selectors.EVENT_READ, ("pidfd", worker))
        self.idle.append(worker)

    def _write(self, worker: _Worker, data: bytes) -> None:
        if worker.wbuf:
            worker.wbuf += data
            return
        try:
            sent = worker.sock.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the worker is dying; its pidfd will report it
        if sent < len(data):
            # A big job: keep the rest and let the selector tell us when there is room,
            # instead of blocking the one thread every other job depends on.
            worker.wbuf += data[sent:]
            self.sel.modify(
                worker.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("sock", worker)
            )

    def _flush(self, worker: _Worker) -> None:
        try:
            sent = worker.sock.send(worker.wbuf, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return
        except OSError:
            worker.wbuf.clear()
            return
        del worker.wbuf[:sent]
        if not worker.wbuf and not worker.gone:
            self.sel.modify(worker.sock, selectors.EVENT_READ, ("sock", worker))

    def _on_readable(self, worker: _Worker) -> None:
        if not self._drain(worker):
            self._on_gone(worker)

    def _drain(self, worker: _Worker) -> bool:
        """Read and handle every complete frame; False at EOF."""
        while True:
            try:
                chunk = worker.sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not chunk:
                return False
            worker.rbuf += chunk
            buf = worker.rbuf
            pos = 0
            while len(buf) - pos >= 4:
                (n,) = protocol.HEADER.unpack_from(buf, pos)
                if len(buf) - pos - 4 < n:
                    break
                msg = self.worker_decoder.decode(memoryview(buf)[pos + 4 : pos + 4 + n])
                pos += 4 + n
                self._on_message(worker, msg)
            del buf[:pos]
            if worker.gone:
                return True

    def _on_message(self, worker: _Worker, msg: protocol.WorkerMsg) -> None:
        if isinstance(msg, protocol.Log):
            _reemit(msg)
            return
        if isinstance(msg, protocol.Ready):
            worker.cpu_base = msg.cpu_total_ms
            worker.ready = True
            self.failed_starts = 0
            self.ready_count += 1
            if self.ready_count >= self.limits.workers:
                self.ready_event.set()
            return
        if not worker.tasks or worker.tasks[0].id != msg.id:
            raise RuntimeError(f"worker {worker.pid} answered job {msg.id} out of order")
        task = worker.tasks.popleft()
        worker.jobs += 1
        worker.cpu_base = msg.cpu_total_ms
        if msg.rss_kb > self.limits.max_rss_mb * 1024:
            worker.retiring = True
        if isinstance(msg, protocol.Done):
            self._done(task, msg, worker)
        elif msg.kind == "expired":
            if not task.done:
                self.counts["timeouts"] += 1
            self._resolve(
                task, "timeout", error="deadline passed before the job started", limit="wall"
            )
        else:
            if msg.kind == "memory":
                worker.retiring = True  # a heap that hit RLIMIT_AS is not worth keeping
            self._resolve(
                task,
                "error",
                error=msg.error,
                limit="memory" if msg.kind == "memory" else "",
                cpu_ms=msg.cpu_ms,
                worker=worker,
            )
        if worker.gone or worker.tasks:
            return
        if worker.retiring or worker.jobs >= self.limits.max_jobs_per_worker:
            self.counts["recycled"] += 1
            self._forget(worker)  # EOF on its pipe makes it exit cleanly
            self._spawn()
        else:
            self.idle.append(worker)

    def _done(self, task: _Task, msg: protocol.Done, worker: _Worker) -> None:
        value = msg.value
        if task.guard:
            try:
                value = msgspec.convert(value, Verdict)
            except msgspec.ValidationError as exc:
                self._resolve(task, "error", error=f"bad verdict from worker: {exc}", worker=worker)
                return
        self._resolve(task, "ok", value=value, cpu_ms=msg.cpu_ms, worker=worker)

    def _kill(self, worker: _Worker) -> None:
        # Snapshot descendants first: once the worker dies they are re-parented and
        # a guard's start_new_session=True grandchild would be out of reach of killpg.
        escaped = _descendants(worker.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        for pid in escaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._forget(worker)
        self._requeue_waiting(worker)
        self._spawn()

    def _requeue_waiting(self, worker: _Worker) -> None:
        """Jobs behind the running one never started: back to the front of the queue."""
        while len(worker.tasks) > 1:
            task = worker.tasks.pop()
            task.worker = None
            if not task.done:
                self.queue.appendleft(task)

    def _forget(self, worker: _Worker) -> None:
        """Drop a worker we ended on purpose; the zygote's Exited for it is ignored."""
        self._close_worker(worker)
        self.by_pid.pop(worker.pid, None)

    def _close_worker(self, worker: _Worker) -> None:
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

    def _on_gone(self, worker: _Worker) -> None:
        """The worker died on its own (pidfd readable or EOF); its job waits for Exited."""
        if worker.gone:
            return
        self._drain(worker)  # a Done written just before death still counts
        self._close_worker(worker)
        if not worker.ready:
            self.failed_starts += 1
            if self.failed_starts >= 3:
                # Respawning a worker that cannot start would spin forever: stop here.
                self.broken = "workers die before they are ready (see stderr)"
                self.ready_event.set()
        self._requeue_waiting(worker)
        self._spawn()
        if not worker.tasks or worker.tasks[0].done:
            self.by_pid.pop(worker.pid, None)

    def _on_exited(self, msg: protocol.Exited) -> None:
        worker = self.by_pid.pop(msg.pid, None)
        if worker is None:
            return
        self._on_gone(worker)
        if not worker.tasks or worker.tasks[0].done:
            return
        task = worker.tasks[0]
        if msg.signal == signal.SIGPROF:
            self.counts["timeouts"] += 1
            self._resolve(
                task,
                "timeout",
                error=f"CPU budget of {task.msg.cpu_ms} ms used up; worker {msg.pid} killed",
                limit="cpu",
                cpu_ms=float(task.msg.cpu_ms),
                signal=msg.signal,
                worker=worker,
            )
            return
        self.counts["crashed"] += 1
        how = f"signal {msg.signal}" if msg.signal is not None else f"exit code {msg.exit_code}"
        self._resolve(
            task,
            "crash",
            error=f"worker {msg.pid} died during the job ({how})",
            exit_code=msg.exit_code,
            signal=msg.signal,
            worker=worker,
        )

    # -- teardown ---------------------------------------------------------------------------

    def _teardown(self) -> None:
        for task in [*self.inbox, *self.queue, *(t for _, _, t in self.heap)]:
            self._resolve(task, "error", error="pool shut down")
        self.inbox.clear()
        self.queue.clear()
        self.heap.clear()
        for worker in list(self.by_pid.values()):
            for task in worker.tasks:
                self._resolve(task, "error", error="pool shut down", worker=worker)
            if not worker.gone:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
            self._forget(worker)
        for sock in self.pending_spawns.values():
            sock.close()
        self.pending_spawns.clear()
        # EOF on the control socket: the zygote kills whatever is left, reaps and exits.
        self._close_fds()
        _stop_process(self.zygote)
        _live_managers.discard(self)

    def _close_fds(self) -> None:
        self.ctrl.close()
        self.sel.close()
        with contextlib.suppress(OSError):
            os.close(self.wake)

    def stats(self) -> PoolStats:
        c = self.counts
        return PoolStats(
            workers=sum(1 for w in list(self.by_pid.values()) if not w.gone),
            busy=sum(1 for w in list(self.by_pid.values()) if w.tasks),
            queued=len(self.queue) + len(self.inbox),
            spawned=c["spawned"],
            killed=c["killed"],
            crashed=c["crashed"],
            recycled=c["recycled"],
            completed=c["completed"],
            timeouts=c["timeouts"],
            refused=c["refused"],
        )


_live_managers: weakref.WeakSet[_Manager] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked copy of the host must not hold the zygote's control socket open, or
    # the zygote would not see EOF when the real host dies.
    for manager in list(_live_managers):
        manager.ctrl.close()
    _live_managers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, from the kernel's per-thread ``children`` lists.

    Much cheaper than ``psutil.Process.children`` (which scans all of /proc, ~2.5 ms
    with 80 processes) — this runs on the kill path, where milliseconds are overshoot.
    psutil is the fallback for kernels without CONFIG_PROC_CHILDREN.
    """
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{current}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except FileNotFoundError:
                return _psutil_descendants(pid)
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def _psutil_descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_ms_of(pid: int) -> float:
    """User + system CPU of a live process, from /proc (one read, no psutil on the kill path)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000.0 / _CLK_TCK


def _reemit(msg: protocol.Log) -> None:
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


class GuardPool:
    """A pool of sandboxed worker processes running guard code under hard limits.

    Safe to use from many threads at once. See ``docs/pool.md``.
    """

    def __init__(
        self,
        workers: int | None = None,
        job_timeout_ms: int = 1000,
        job_cpu_ms: int = 1000,
        memory_mb: int = 256,
        max_rss_mb: int | None = None,
        max_jobs_per_worker: int = 10000,
        max_input_bytes: int = 1 << 20,
        preload: Sequence[str] = (),
        hardening: Hardening = "standard",
        guard_specs: Iterable[GuardSpec] = (),
        guard_defaults: GuardDefaults | None = None,
        import_path: Sequence[str] = (),
    ) -> None:
        n = workers if workers is not None else (os.cpu_count() or 1)
        for name, value in (
            ("workers", n),
            ("job_timeout_ms", job_timeout_ms),
            ("job_cpu_ms", job_cpu_ms),
            ("memory_mb", memory_mb),
            ("max_jobs_per_worker", max_jobs_per_worker),
            ("max_input_bytes", max_input_bytes),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GuardPool: {name} must be a positive integer, got {value!r}")
        if hardening not in ("standard", "strict"):
            raise ValueError(
                f"GuardPool: hardening must be 'standard' or 'strict', not {hardening!r}"
            )
        self._limits = _Limits(
            workers=n,
            job_timeout_ms=job_timeout_ms,
            job_cpu_ms=job_cpu_ms,
            memory_mb=memory_mb,
            max_rss_mb=max_rss_mb if max_rss_mb is not None else memory_mb * 3 // 4,
            max_jobs_per_worker=max_jobs_per_worker,
            max_input_bytes=max_input_bytes,
            preload=tuple(preload),
            hardening=hardening,
            import_path=tuple(import_path),
        )
        specs = list(guard_specs)
        default_timeout = guard_defaults.timeout_ms if guard_defaults is not None else 1000
        self._guard_timeouts = {
            s.name: s.timeout_ms if s.timeout_ms is not None else default_timeout for s in specs
        }
        self._guards = msgspec.msgpack.encode(specs) if specs else b""
        self._guard_defaults = (
            msgspec.msgpack.encode(guard_defaults) if guard_defaults is not None else b""
        )
        self._lock = threading.Lock()
        self._closed = False
        self._manager: _Manager | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @classmethod
    def from_config(
        cls, source: str | Path | dict[str, Any] | Config | PoolConfig | Policy
    ) -> GuardPool:
        """A pool from a policy file/dict, a ``Config``, a loaded ``Policy`` or a ``PoolConfig``.

        With anything but a bare ``PoolConfig`` the pool also gets the guard specs and
        guard defaults, so ``submit_guard`` works.
        """
        from guardpool.policy.config import Config, PoolConfig
        from guardpool.policy.loader import Policy, load_policy

        if isinstance(source, PoolConfig):
            return cls._from_pool(source, (), None)
        if isinstance(source, Config):
            return cls._from_pool(source.pool, source.guard, source.guards)
        policy = source if isinstance(source, Policy) else load_policy(source)
        return cls._from_pool(
            policy.config.pool,
            [g.spec for g in policy.guards.values()],
            policy.config.guards,
            policy.import_path,
        )

    @classmethod
    def _from_pool(
        cls,
        pool: PoolConfig,
        specs: Iterable[GuardSpec],
        defaults: GuardDefaults | None,
        import_path: Sequence[str] = (),
    ) -> GuardPool:
        return cls(
            workers=pool.workers,
            job_timeout_ms=pool.job_timeout_ms,
            job_cpu_ms=pool.job_cpu_ms,
            memory_mb=pool.memory_mb,
            max_rss_mb=pool.max_rss_mb,
            max_jobs_per_worker=pool.max_jobs_per_worker,
            max_input_bytes=pool.max_input_bytes,
            preload=tuple(pool.preload),
            hardening=pool.hardening,
            guard_specs=specs,
            guard_defaults=defaults,
            import_path=import_path,
        )

    @property
    def limits(self) -> _Limits:
        return self._limits

    def start(self) -> GuardPool:
        """Start the zygote and the workers; returns once they are ready. Idempotent."""
        self._running()
        return self

    def _running(self) -> _Manager:
        manager = self._manager
        if manager is not None:
            return manager
        with self._lock:
            if self._closed:
                raise RuntimeError("GuardPool: the pool is shut down")
            if self._manager is None:
                manager = _Manager(
                    self._limits, self._guards, self._guard_defaults, self._guard_timeouts
                )
                self._finalizer = weakref.finalize(self, manager.stop)
                try:
                    manager.start()
                except BaseException:
                    manager.stop()
                    raise
                self._manager = manager
            return self._manager

    def __enter__(self) -> GuardPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def submit(
        self,
        target: str,
        input: Any,
        timeout_ms: int | None = None,
        cpu_ms: int | None = None,
    ) -> Future[JobResult]:
        """Run ``fn(input)`` for ``target = "module:function"`` in a worker."""
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"GuardPool.submit: target {target!r} is not 'module:function'")
        cpu = cpu_ms if cpu_ms is not None else self._limits.job_cpu_ms

        def make(task_id: int, raw: msgspec.Raw, cpu: int, deadline: float) -> protocol.CallJob:
            return protocol.CallJob(task_id, target, raw, cpu, deadline)

        timeout = timeout_ms if timeout_ms is not None else self._limits.job_timeout_ms
        return self._running().submit(make, input, timeout, cpu)

    async def asubmit(
        self,
        target: str,
        input: Any,
        timeout_ms: int | None = None,
        cpu_ms: int | None = None,
    ) -> JobResult:
        return await asyncio.wrap_future(self.submit(target, input, timeout_ms, cpu_ms))

    def submit_guard(
        self,
        name: str,
        input: Any,
        *,
        labels: Sequence[str] = (),
        run_id: str = "",
        principal: str = "",
        phase: str = "before",
        timeout_ms: int | None = None,
    ) -> Future[JobResult]:
        """Run the compiled guard ``name``; an ``ok`` result's value is a ``Verdict``."""
        if name not in self._guard_timeouts:
            raise KeyError(f"GuardPool.submit_guard: unknown guard {name!r}")
        timeout = timeout_ms if timeout_ms is not None else self._guard_timeouts[name]
        labels_t = tuple(labels)

        def make(task_id: int, raw: msgspec.Raw, cpu: int, deadline: float) -> protocol.GuardJob:
            return protocol.GuardJob(
                task_id, name, raw, labels_t, run_id, principal, phase, deadline, cpu
            )

        return self._running().submit(make, input, timeout, self._limits.job_cpu_ms)

    def stats(self) -> PoolStats:
        manager = self._manager
        if manager is None:
            return PoolStats(
                workers=0,
                busy=0,
                queued=0,
                spawned=0,
                killed=0,
                crashed=0,
                recycled=0,
                completed=0,
                timeouts=0,
                refused=0,
            )
        return manager.stats()

    def shutdown(self) -> None:
        """Fail outstanding jobs, kill every worker and the zygote, close every fd."""
        with self._lock:
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()  # runs manager.stop once, then detaches
                self._finalizer = None
            self._manager = None


__all__ = ["GuardPool", "JobResult", "PoolStats"]
