"""The host's end of the zygote: start it, ask it for workers, hear what it reports.

Start-up is asynchronous so that the manager thread keeps answering deadlines while a
zygote (re)starts: ``launch`` forks/execs the interpreter and writes ``Setup`` to its
stdin; ``ZygoteReady`` then arrives on the control socket like any other message.

Restart policy (``Backoff``): the n-th consecutive loss waits 50 ms * 2**(n-1),
capped at 2 s; after ``MAX_RESTARTS`` losses without a worker becoming ready in
between, the pool is broken (something about the configuration kills it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import weakref

import msgspec

from guardpool.worker import cgroups, protocol

MAX_RESTARTS = 5
_DECODER = msgspec.msgpack.Decoder(protocol.ZygoteMsg)
_ENCODER = msgspec.msgpack.Encoder()


class ZygoteLink:
    def __init__(self, setup: protocol.Setup) -> None:
        self.setup = setup
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctrl: socket.socket | None = None
        self.ready = False
        self.layout = cgroups.Layout("")
        _live_links.add(self)

    def launch(self) -> socket.socket:
        """Start a zygote; returns the (non-blocking) control socket to watch."""
        ctrl, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(self.setup.sys_path))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guardpool.worker.zygote", str(child.fileno())],
                stdin=subprocess.PIPE,
                stdout=sys.__stderr__.fileno() if sys.__stderr__ else subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
                env=env,
            )
        except BaseException:
            ctrl.close()
            raise
        finally:
            child.close()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(_ENCODER.encode(self.setup))
            self.proc.stdin.close()
        except OSError:
            pass  # it died at once: EOF on the control socket tells the manager
        ctrl.setblocking(False)
        self.ctrl = ctrl
        self.ready = False
        return ctrl

    def messages(self) -> tuple[list[protocol.ZygoteMsg], bool]:
        """Everything the zygote sent since last time, and False once it is gone."""
        assert self.ctrl is not None
        out: list[protocol.ZygoteMsg] = []
        while True:
            try:
                data = self.ctrl.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return out, True
            except OSError:
                return out, False
            if not data:
                return out, False
            out.append(_DECODER.decode(data))

    def spawn(self, token: int, jobs_fd: int, answers_fd: int) -> None:
        """Ask for one worker with these socket ends (it reads jobs from the first and
        writes answers to the second); raises OSError if the zygote is gone."""
        assert self.ctrl is not None
        msg = _ENCODER.encode(protocol.Spawn(token))
        socket.send_fds(self.ctrl, [msg], [jobs_fd, answers_fd])

    def close(self) -> int | None:
        """Close the control socket (the zygote kills its workers and exits); its status."""
        if self.ctrl is not None:
            self.ctrl.close()
            self.ctrl = None
        proc, self.proc = self.proc, None
        self.ready = False
        if proc is None:
            return None
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


class Backoff:
    """Consecutive zygote losses and when the next start may happen."""

    def __init__(self) -> None:
        self.losses = 0

    def lost(self) -> float | None:
        """Seconds to wait before the next start, or None when it is time to give up."""
        self.losses += 1
        if self.losses > MAX_RESTARTS:
            return None
        return min(0.05 * float(2 ** (self.losses - 1)), 2.0)

    def healthy(self) -> None:
        self.losses = 0


_live_links: weakref.WeakSet[ZygoteLink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked copy of the host must not hold the zygote's control socket open, or
    # the zygote would not see EOF when the real host dies.
    for link in list(_live_links):
        if link.ctrl is not None:
            with contextlib.suppress(OSError):
                link.ctrl.close()
    _live_links.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
