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
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from typing import TYPE_CHECKING

import msgspec

from guardpool.worker import main as worker_main
from guardpool.worker import protocol, sandbox

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard


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
        self.workers: dict[int, str] = {}  # pid -> work directory
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
        try:
            for name in self.setup.preload:
                __import__(name)
            self.guards, self.regex_max_mem = _compile_guards(self.setup)
            sandbox.set_child_subreaper()
            sandbox.scrub_environment()
        except BaseException as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.send(protocol.ZygoteReady(os.getpid(), detail))
            raise SystemExit(1) from None
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
        self.send(protocol.ZygoteReady(os.getpid(), ""))

    def run(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.sel.register(self.ctrl, selectors.EVENT_READ, "ctrl")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "chld")
        try:
            while not self.host_gone:
                for key, _mask in self.sel.select():
                    if key.data == "chld":
                        self._drain_wake()
                        self._reap()
                    elif not self._on_control():
                        return
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
            data, fds, _flags, _addr = socket.recv_fds(self.ctrl, 4096, 1)
        except InterruptedError:
            return True
        except ConnectionError:
            return False  # host gone with packets still in flight
        if not data:
            return False  # host gone
        msg = self.decoder.decode(data)
        if not fds:
            self.send(protocol.Spawned(msg.token, 0, "spawn request carried no socket"))
            return True
        self._fork(msg.token, fds[0])
        return True

    def _fork(self, token: int, sock_fd: int) -> None:
        workdir = tempfile.mkdtemp(dir=self.root)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                sock = worker_main.setup_worker(sock_fd, workdir, self.setup, self.seccomp)
                worker_main.Worker(
                    sock, self.guards, self.regex_max_mem, self.setup.log_level
                ).serve()
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                os._exit(code)
        os.close(sock_fd)
        # Also from the parent, so the group exists before the host can ever killpg it.
        # (OSError: the child already did it, or already died: Exited will say which.)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        self.workers[pid] = workdir
        self.send(protocol.Spawned(token, pid, ""))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            workdir = self.workers.pop(pid, None)
            if workdir is None:
                continue  # a re-parented descendant of a dead worker
            shutil.rmtree(workdir, ignore_errors=True)
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                self.send(protocol.Exited(pid, None, -code))
            else:
                self.send(protocol.Exited(pid, code, None))
            self._kill_orphans()

    def _kill_orphans(self) -> None:
        """Kill re-parented descendants of dead workers (they are our children, not workers)."""
        for pid in _children(os.getpid()):
            if pid not in self.workers:
                _kill(pid)

    def _shutdown(self) -> None:
        for pid in list(self.workers):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                _kill(pid)
        for pid in _children(os.getpid()):
            _kill(pid)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        shutil.rmtree(self.root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


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
