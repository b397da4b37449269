"""The zygote: a clean, single-threaded interpreter that forks workers on request.

Started by the host as ``python -m guardpool.worker.zygote FD`` where FD is the
control socket (``SOCK_SEQPACKET``), with the ``Setup`` message on stdin. It
imports ``preload`` and compiles the guards once, so each fork starts warm.

Forking from here rather than from the host is what makes fork safe: the host
may run many threads and an asyncio loop, and a fork there could copy a lock
held by another thread. This process never starts a thread.

Lifetime rules:

* EOF on the control socket means the host is gone (closed or died): kill every
  worker's process group, reap, remove the work directories, exit.
* Every reaped worker is reported as ``Exited`` so the host can tell a crash's
  exit code or signal.
* The zygote is a child subreaper: a guard's escaped grandchild is re-parented
  here when its worker dies, and killed here rather than left to pid 1.
* A fork that fails (EAGAIN: the pids cgroup or pid space is full; ENOMEM) is not
  fatal: the request waits and is retried with exponential backoff, and the host
  hears ``ForkFailed`` each time. The zygote exits only when the host goes away.
* Each worker gets its own cgroup (``cgroups.py``) when the machine allows it; the
  zygote creates it before the fork and removes it after the reap.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gc
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from typing import TYPE_CHECKING

import msgspec

from guardpool.worker import cgroups, procfs, protocol, sandbox, startup
from guardpool.worker import main as worker_main

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard


_OWN_JOBS = ("guardpool.worker.probe", "guardpool.analysis.probes")


def _read_setup() -> protocol.Setup:
    data = sys.stdin.buffer.read()
    return msgspec.msgpack.decode(data, type=protocol.Setup)


def _compile_guards(setup: protocol.Setup) -> tuple[dict[str, CompiledGuard], int]:
    if not setup.guards:
        return {}, 8 << 20
    from guardpool.policy.config import GuardDefaults, GuardSpec
    from guardpool.policy.guards import compile_guards

    specs = msgspec.msgpack.decode(setup.guards, type=list[GuardSpec])
    defaults = (
        msgspec.msgpack.decode(setup.guard_defaults, type=GuardDefaults)
        if setup.guard_defaults
        else GuardDefaults()
    )
    return dict(compile_guards(specs, defaults)), defaults.regex_max_mem


class Zygote:
    def __init__(self, ctrl: socket.socket, setup: protocol.Setup) -> None:
        self.ctrl = ctrl
        self.setup = setup
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(protocol.Spawn)
        self.workers: dict[int, tuple[str, cgroups.WorkerCgroup]] = {}  # pid -> dir, cgroup
        self.stale: list[cgroups.WorkerCgroup] = []  # still busy at reap; retried
        self.cgroup = cgroups.Layout("")
        self.forked = 0
        # Spawn requests waiting for a fork to succeed again (EAGAIN/ENOMEM).
        self.retry: collections.deque[tuple[int, tuple[int, ...]]] = collections.deque()
        self.retry_at = 0.0
        self.backoff = 0.0
        self.guards: dict[str, CompiledGuard] = {}
        self.regex_max_mem = 8 << 20
        self.root = tempfile.mkdtemp(prefix="guardpool-")
        self.seccomp = False
        self.host_gone = False
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def send(self, msg: msgspec.Struct) -> None:
        try:
            self.ctrl.sendall(self.encoder.encode(msg))
        except OSError:
            self.host_gone = True  # the run loop shuts down at its next turn

    def prepare(self) -> None:
        """Imports, guard compilation and process-wide measures; failures go to the host."""
        for name in _OWN_JOBS:
            # guardpool's own worker-side jobs, imported here (possibly as root) because an
            # unprivileged worker may be unable to read the interpreter's library.
            with contextlib.suppress(Exception):
                __import__(name)
        try:
            for name in self.setup.preload:
                __import__(name)
            self.guards, self.regex_max_mem = _compile_guards(self.setup)
            sandbox.set_child_subreaper()
            sandbox.scrub_environment()
            if self.setup.uid >= 0:
                # Workers run as another uid: they must be able to enter their own
                # directory below ours, and list nothing else in it.
                os.chmod(self.root, 0o711)
        except BaseException as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.send(protocol.ZygoteReady(os.getpid(), detail))
            raise SystemExit(1) from None
        self.cgroup = cgroups.pool_layout(f"guardpool-{os.getpid()}")
        sandbox.STATUS["cgroup"] = self.cgroup.reason if not self.cgroup.mode else ""
        sandbox.STATUS["cgroup_mode"] = self.cgroup.mode
        if self.setup.hardening == "strict":
            # Once here, not per worker: creating a netns costs milliseconds and its
            # teardown is asynchronous; every forked worker inherits this one.
            try:
                sandbox.unshare_network()
                sandbox.STATUS["netns"] = ""
            except OSError as exc:
                sandbox.STATUS["netns"] = str(exc)
            reason = sandbox.seccomp_unavailable_reason()
            sandbox.STATUS["seccomp"] = reason
            self.seccomp = reason == ""
        else:
            for measure in ("netns", "seccomp"):
                sandbox.STATUS[measure] = 'hardening is "standard" (strict enables it)'
        # Everything imported so far is shared with every worker copy-on-write; frozen,
        # the cyclic GC never writes to those objects' headers in a worker, so their pages
        # stay shared (less memory, fewer page faults in a fresh worker's first job).
        gc.collect()
        gc.freeze()
        # Forking replacements and reaping is background work: at nice 10 it never
        # delays the host's deadline kills or the spare serving the next job. Workers
        # inherit it (with a CPU cgroup they are weighed as a group anyway).
        with contextlib.suppress(OSError):
            os.setpriority(
                os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), sandbox.WORKER_NICE)
            )
        self.send(protocol.ZygoteReady(os.getpid(), "", self.cgroup))

    def run(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.sel.register(self.ctrl, selectors.EVENT_READ, "ctrl")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "chld")
        try:
            while not self.host_gone:
                timeout = max(0.0, self.retry_at - time.monotonic()) if self.retry else None
                for key, _mask in self.sel.select(timeout):
                    if key.data == "chld":
                        self._drain_wake()
                        self._reap()
                    elif not self._on_control():
                        return
                if self.retry and time.monotonic() >= self.retry_at:
                    self._retry_forks()
        finally:
            self._shutdown()

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _on_control(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctrl, 4096, 2)
        except InterruptedError:
            return True
        except ConnectionError:
            return False  # host gone with packets still in flight
        if not data:
            return False  # host gone
        msg = self.decoder.decode(data)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self.send(protocol.Spawned(msg.token, 0, "spawn request did not carry two sockets"))
            return True
        pair = (fds[0], fds[1])  # the worker's ends: jobs in, answers out
        if self.retry:
            self.retry.append((msg.token, pair))  # keep the order; the timer retries
        else:
            self._fork(msg.token, pair)
        return True

    def _retry_forks(self) -> None:
        while self.retry and not self.host_gone:
            token, fds = self.retry.popleft()
            if not self._fork(token, fds):
                return

    def _fork(self, token: int, fds: tuple[int, ...]) -> bool:
        """Fork one worker; False (request queued for a retry) when the kernel refuses."""
        workdir = ""
        cgroup = cgroups.NONE
        try:
            workdir = tempfile.mkdtemp(dir=self.root)
            if self.setup.uid >= 0:
                os.chown(workdir, self.setup.uid, self.setup.gid)
            self.forked += 1
            cgroup = cgroups.create_worker(
                self.cgroup, self.forked, self.setup.pids_max, self.setup.memory_mb << 20
            )
            pid = os.fork()
        except OSError as exc:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            if cgroup.mode:
                cgroups.remove(cgroup)
            self._fork_failed(token, fds, exc)
            return False
        if pid == 0:
            code = 0
            try:
                jobs, answers = startup.setup_worker(fds, workdir, self.setup, self.seccomp, cgroup)
                worker_main.Worker(
                    jobs,
                    answers,
                    self.guards,
                    self.regex_max_mem,
                    self.setup.log_level,
                    self.setup.idle_poll_us,
                ).serve()
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                os._exit(code)
        self.backoff = 0.0
        for fd in fds:
            os.close(fd)
        # Also from the parent, so the group exists before the host can ever killpg it.
        # (OSError: the child already did it, or already died: Exited will say which.)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        self.workers[pid] = (workdir, cgroup)
        self.send(protocol.Spawned(token, pid, "", cgroup))
        return True

    def _fork_failed(self, token: int, fds: tuple[int, ...], exc: OSError) -> None:
        # EAGAIN (pids cgroup or pid space full) and ENOMEM heal when the guard that
        # caused them is killed: wait and retry rather than die and break the pool.
        self.backoff = min(max(self.backoff * 2, 0.002), 0.5)
        self.retry_at = time.monotonic() + self.backoff
        self.retry.appendleft((token, fds))
        name = errno.errorcode.get(exc.errno or 0, "error")
        self.send(protocol.ForkFailed(token, f"{name}: {exc.strerror or exc}", self.backoff * 1000))

    def _reap(self) -> None:
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            entry = self.workers.pop(pid, None)
            if entry is None:
                continue  # a re-parented descendant of a dead worker
            workdir, cgroup = entry
            shutil.rmtree(workdir, ignore_errors=True)
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                self.send(protocol.Exited(pid, None, -code))
            else:
                self.send(protocol.Exited(pid, code, None))
            if cgroup.mode:
                self.stale.append(cgroup)
        if reaped:
            self._kill_orphans()
            # A cgroup is removable once its last member is reaped; members are our
            # descendants (we are their subreaper), so each death brings us back here.
            self.stale = [cg for cg in self.stale if not _remove_quietly(cg)]

    def _kill_orphans(self) -> None:
        """Kill re-parented descendants of dead workers (they are our children, not workers)."""
        for pid in procfs.children(os.getpid()):
            if pid not in self.workers:
                _kill(pid)

    def _shutdown(self) -> None:
        for pid, (_workdir, cgroup) in list(self.workers.items()):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                _kill(pid)
            cgroups.kill(cgroup)
            self.stale.append(cgroup)
        for pid in procfs.children(os.getpid()):
            _kill(pid)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        for _token, fds in self.retry:
            for fd in fds:
                os.close(fd)
        for cgroup in self.stale:
            _remove_quietly(cgroup)
        cgroups.remove_pool(self.cgroup)
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_quietly(cgroup: cgroups.WorkerCgroup) -> bool:
    try:
        return cgroups.remove(cgroup)
    except OSError:
        return True  # not ours to keep trying (e.g. removed under us)


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    ctrl_fd = int(argv[0])
    setup = _read_setup()
    sys.path[:] = setup.sys_path
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    ctrl = socket.socket(fileno=ctrl_fd)
    zygote = Zygote(ctrl, setup)
    zygote.prepare()
    zygote.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
