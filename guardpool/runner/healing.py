"""The manager's zygote supervision: start, hear, lose and restart the zygote; break; stop.

Data flow::

  _launch_zygote ─► ZygoteLink.launch (fork/exec + Setup on stdin) ─► control socket
  control socket ─► ZygoteReady ─► state "running", spawn workers (+ the spare)
                 ─► Spawned(pid, cgroup) ─► WorkerLink, epoll on its socket and pidfd
                 ─► Exited(pid, code|signal) ─► the job's crash / CPU-budget verdict
                 ─► ForkFailed (EAGAIN/ENOMEM, the zygote retries) ─► counted, logged
                 ─► EOF ─► _zygote_lost: workers killed, their jobs "crash", state
                           "healing", restart after ``Backoff``; too many losses: broken

Healing: a zygote that dies takes its workers with it (they have PDEATHSIG). Their
jobs end as ``crash``, queued jobs wait, and a new zygote starts after a backoff; jobs
still queued at their deadline are answered ``timeout`` meanwhile. Only what cannot
heal (a configuration error reported by the zygote, workers dying before ready, a
zygote dying again and again) breaks the pool: ``PoolBroken``.

A mixin of ``Manager`` (manager.py): these methods run on the manager thread only.

"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

from guardpool.runner.results import PoolBroken, PoolState
from guardpool.worker import cgroups, protocol

if TYPE_CHECKING:
    import select

    from guardpool.runner.dispatch import Dispatcher
    from guardpool.runner.scheduler import Scheduler
    from guardpool.runner.worker_link import WorkerLink
    from guardpool.runner.zygote_link import Backoff, ZygoteLink

log = logging.getLogger("guardpool.pool")


class ZygoteSupervision:
    # Provided by Manager.
    sched: Scheduler
    disp: Dispatcher
    ep: select.epoll
    zygote: ZygoteLink
    by_pid: dict[int, WorkerLink]
    pending_spawns: dict[int, tuple[socket.socket, socket.socket]]
    live: int
    state: PoolState
    broken: PoolBroken | None
    stopping: bool
    restart_at: float | None
    backoff: Backoff
    stale_layouts: list[cgroups.Layout]
    ready_event: threading.Event
    wake: int
    wake_lock: threading.Lock

    if TYPE_CHECKING:

        def _register(self, fd: int, events: int, kind: str, obj: WorkerLink | None) -> None: ...

        def _unregister(self, fd: int) -> None: ...

        def _spawn(self) -> None: ...

        def _forget(self, worker: WorkerLink) -> None: ...

        def _bury(self) -> None: ...

        def _on_gone(self, worker: WorkerLink) -> None: ...

        def _on_spawned(self, msg: protocol.Spawned) -> None: ...

    # -- the zygote -------------------------------------------------------------------------

    def _launch_zygote(self) -> None:
        try:
            ctrl = self.zygote.launch()
        except OSError as exc:  # e.g. EAGAIN from fork/exec while pids are exhausted
            log.warning("guardpool: cannot start the worker zygote: %s", exc)
            self._zygote_lost(f"cannot start: {exc}")
            return
        import select

        self._register(ctrl.fileno(), select.EPOLLIN, "ctrl", None)

    def _on_control(self) -> None:
        msgs, alive = self.zygote.messages()
        for msg in msgs:
            if isinstance(msg, protocol.Spawned):
                self._on_spawned(msg)
            elif isinstance(msg, protocol.Exited):
                self._on_exited(msg)
            elif isinstance(msg, protocol.ForkFailed):
                self.disp.count("fork_failures")
                n = self.disp.counts["fork_failures"]
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
            self.disp.healing = False
        self._spawn()

    def _sweep_cgroups(self) -> None:
        self.stale_layouts = [lay for lay in self.stale_layouts if not cgroups.remove_tree(lay)]

    def _zygote_lost(self, how: str) -> None:
        ctrl = self.zygote.ctrl
        if ctrl is not None:
            self._unregister(ctrl.fileno())
        was_ready = self.zygote.ready
        status = self.zygote.close()
        layout = self.zygote.layout
        self.zygote.layout = cgroups.Layout("")
        if self.stopping or self.broken is not None:
            return
        detail = f"{how}, status {status}" if status is not None else how
        # Its workers die with it (PDEATHSIG); make sure, and answer their jobs now:
        # no Exited will come from a dead zygote. All of them leave the idle list before
        # the first verdict: a caller woken by one must not hand its next job to another
        # dead worker of this zygote.
        workers = list(self.by_pid.values())
        for worker in workers:
            if not worker.gone:
                worker.kill()
                worker.kill_cgroup()
            self._forget(worker)  # a job it had not even read goes back to the queue
        for worker in workers:
            task = worker.task
            if task is not None and not task.answered:
                self.disp.count("crashed")
                self.sched.resolve(
                    task,
                    "crash",
                    error=f"the worker zygote died ({detail}); worker {worker.pid} died with it",
                    worker_pid=worker.pid,
                )
        for pair in self.pending_spawns.values():
            for sock in pair:
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
        self.disp.count("zygote_restarts")
        self.state = "healing"
        self.disp.healing = True
        self.restart_at = time.monotonic() + wait
        log.error(
            "guardpool: the worker zygote died (%s)%s; restarting it in %.0f ms",
            detail,
            "" if was_ready else " before it was ready",
            wait * 1000,
        )

    def _on_exited(self, msg: protocol.Exited) -> None:
        worker = self.by_pid.pop(msg.pid, None)
        if worker is None:
            return
        self._on_gone(worker)
        task = worker.task
        if task is None or task.answered:
            return
        if msg.signal == signal.SIGPROF:
            self.sched.resolve(
                task,
                "timeout",
                error=f"CPU budget of {task.msg.cpu_ms} ms used up; worker {msg.pid} killed",
                limit="cpu",
                cpu_ms=float(task.msg.cpu_ms),
                signal=msg.signal,
                worker_pid=worker.pid,
                count="timeouts",
            )
            return
        self.disp.count("crashed")
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
        for task in self.sched.pending():
            self.sched.resolve(task, "error", error="pool shut down")
        self.sched.clear()
        self._bury()
        workers = list(self.by_pid.values())
        for worker in workers:
            if worker.task is not None:
                self.sched.resolve(worker.task, "error", error="pool shut down")
            if not worker.gone:
                worker.kill()
            self._forget(worker)
        for worker in workers:
            # A caller may still be polling it (it sees the death and lets go at once).
            if worker.rlock.acquire(timeout=5):
                worker.close_fds()
                worker.rlock.release()
        for pair in self.pending_spawns.values():
            for sock in pair:
                sock.close()
        self.pending_spawns.clear()
        # EOF on the control socket: the zygote kills whatever is left, reaps and exits.
        if self.zygote.ctrl is not None:
            self._unregister(self.zygote.ctrl.fileno())
        self.zygote.close()
        for _ in range(50):  # members of a dead zygote's cgroups may still be dying
            self._sweep_cgroups()
            if not self.stale_layouts:
                break
            time.sleep(0.01)
        self.ep.close()
        with self.wake_lock:
            os.close(self.wake)
            self.wake = -1
        if self.state != "broken":
            self.state = "stopped"
