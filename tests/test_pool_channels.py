"""Two socketpairs per worker, and a caller asleep in ``recv`` (caller_read._read_until).

Real workers, real sockets and threads. What must hold: the caller wakes for the
answer, for the manager's kill at the deadline, for the worker's death, and on its own
(the backstop) should the manager never come; a shorter ``result(timeout)`` still
returns on time; the worker sleeps in one ``recv`` per job.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from guardpool import GuardPool, JobResult
from guardpool.runner import caller_read, lifecycle
from guardpool.runner.manager import Manager
from guardpool.runner.worker_link import WorkerLink
from guardpool.worker import cgroups
from tests.processes import gone
from tests.waiting import wait_for

G = "tests.pool_guards:"


def make_pool(**kw: Any) -> GuardPool:
    kw.setdefault("workers", 1)
    kw.setdefault("preload", ["tests.pool_guards"])
    return GuardPool(**kw)


def in_thread(fn: Any, limit: float = 30.0) -> JobResult:
    """``fn()`` in a thread; fails (instead of hanging the suite) if it does not return."""
    out: list[JobResult] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the caller never woke up"
    return out[0]


def test_wake_reader_wakes_a_thread_asleep_in_recv() -> None:
    jobs, worker_jobs = socket.socketpair()
    answers, worker_answers = socket.socketpair()
    link = WorkerLink(os.getpid(), None, jobs, answers, cgroups.NONE)
    got: list[bytes] = []
    try:
        worker_answers.sendall(b"sent before")
        reader = threading.Thread(target=lambda: got.append(answers.recv(100)), daemon=True)
        reader.start()
        reader.join(5)
        assert got == [b"sent before"]  # what was sent is still read
        # The other end stays open (as when a process the worker forked holds it): no
        # EOF would ever come. wake_reader must end the wait.
        reader = threading.Thread(target=lambda: got.append(answers.recv(100)), daemon=True)
        reader.start()
        reader.join(0.2)
        assert reader.is_alive()  # asleep in recv
        link.wake_reader()
        reader.join(10)
        assert not reader.is_alive()
        assert got[-1] == b""
    finally:
        link.close_fds()
        worker_jobs.close()
        worker_answers.close()


def test_each_worker_has_two_sockets_one_per_direction() -> None:
    with make_pool() as p:
        assert p.submit(G + "double", 2).result().value == 4
        manager = p._manager
        assert manager is not None
        for link in manager.by_pid.values():
            assert link.jfd != link.fd
            assert link.jobs.getblocking() is False  # jobs: written, never blocking
            assert link.sock.getblocking() is True  # answers: a caller sleeps in recv


def test_a_killed_job_whose_grandchild_holds_the_socket_still_answers(
    monkeypatch: pytest.MonkeyPatch, shared_dir: Path
) -> None:
    # The grandchild (a new session: out of the worker's process group) keeps the
    # worker's answer socket open, so killing the worker brings no EOF until the
    # grandchild dies too (the zygote removes the dead worker's cgroup, where it has
    # one); the manager's own cleanup and the caller's backstop are pushed far away.
    # The caller must still get its verdict (wake_reader, tested alone above).
    monkeypatch.setattr(lifecycle, "SPAWN_DEFER_S", 600.0)
    monkeypatch.setattr(caller_read, "_BACKSTOP_S", 600.0)
    monkeypatch.setattr(caller_read, "_BACKSTOP_MAX_S", 1200.0)
    pidfile = shared_dir / "pid"
    with make_pool() as p:
        future = p.submit(G + "escaping_grandchild", str(pidfile), timeout_ms=500)
        result = in_thread(future.result)
        assert result.outcome == "timeout"
        assert "killed" in result.error
        assert p.submit(G + "double", 3).result().value == 6  # the spare serves
    assert wait_for(lambda: gone(int(pidfile.read_text())))  # the pool's end kills it


def test_a_worker_that_dies_wakes_its_caller_with_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(caller_read, "_BACKSTOP_S", 600.0)
    monkeypatch.setattr(caller_read, "_BACKSTOP_MAX_S", 1200.0)
    with make_pool() as p:
        # A deadline far away: the verdict must come from the death, not the deadline.
        future = p.submit(G + "segfault", None, timeout_ms=60_000)
        result = in_thread(future.result)
        assert result.outcome == "crash"
        assert p.submit(G + "double", 4).result().value == 8


def test_the_caller_kills_on_its_own_if_the_manager_misses_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fail closed even with a manager that never expires anything: the caller's
    # receive limit (the backstop) wakes it past the deadline, and it kills the job.
    monkeypatch.setattr(Manager, "_expire", lambda self: None)
    with make_pool() as p:
        future = p.submit(G + "spin", None, timeout_ms=200)
        result = in_thread(future.result)
        assert result.outcome == "timeout"
        assert "killed" in result.error
        assert wait_for(lambda: gone(result.worker_pid or 0))
        assert p.submit(G + "double", 5).result().value == 10


def test_a_shorter_result_timeout_returns_before_the_deadline() -> None:
    import concurrent.futures

    with make_pool() as p:
        future = p.submit(G + "spin", None, timeout_ms=3000)
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.2)
        assert not future.done()  # still running: the deadline is later
        assert future.result().outcome == "timeout"


def test_the_worker_sleeps_in_one_recv_per_job() -> None:
    # Between jobs the worker is asleep in recvfrom on its jobs socket (fd 3), not in
    # poll: /proc/PID/syscall names the system call it sleeps in.
    with make_pool() as p:
        pid = p.submit(G + "pid", None).result().value
        assert isinstance(pid, int)

        def sleeping_in() -> str:
            with open(f"/proc/{pid}/syscall") as f:
                return f.read().split()[0]

        # x86-64: 45 recvfrom (recv_into), 7 poll; aarch64: 207 recvfrom, 73 ppoll.
        assert wait_for(lambda: sleeping_in() in {"45", "207"})
        assert sleeping_in() not in {"7", "73"}


def test_a_host_with_a_thousand_descriptors_open_still_meets_deadlines() -> None:
    # The manager sleeps in select() for microsecond deadlines, which takes descriptors
    # below FD_SETSIZE (1024) only; with the epoll descriptor above that it falls back
    # to epoll's own millisecond limit instead of failing (a broken pool).
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200: cannot open enough")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1030:
            held.append(os.open(os.devnull, os.O_RDONLY))
        with make_pool() as p:
            manager = p._manager
            assert manager is not None
            assert manager.ep.fileno() >= 1024 and manager.ep_fds == []
            result = in_thread(lambda: p.submit(G + "spin", None, timeout_ms=200).result())
            assert result.outcome == "timeout"
            assert p.submit(G + "double", 6).result().value == 12
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class _CrossingEpoll:
    """The manager's epoll, with one interleaving forced (see the test below).

    When armed, the manager's switch-off of one socket (``modify(fd, 0)``, made
    without the socket's lock because a caller holds it) waits until a caller thread
    has switched the same socket on, and only then reaches the kernel: the two
    writes cross, as two threads can order them on their own.
    """

    def __init__(self, ep: Any, manager_ident: int) -> None:
        self.ep = ep
        self.manager_ident = manager_ident
        self.fd = -1  # armed for this socket
        self.caller_switched_on = threading.Event()
        self.crossed = threading.Event()

    def modify(self, fd: int, events: int) -> None:
        mine = threading.get_ident() == self.manager_ident
        if fd == self.fd and mine and events == 0 and not self.crossed.is_set():
            self.caller_switched_on.wait(5)
            self.crossed.set()
        self.ep.modify(fd, events)
        if fd == self.fd and not mine and events:
            self.caller_switched_on.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ep, name)


def test_the_manager_watches_a_socket_whose_switch_off_crossed_a_callers_switch_on() -> None:
    # The manager, finding a socket readable while a caller holds its lock, switches
    # its own interest off without the lock; the caller, handing the worker its next
    # job (one whose own caller already waits on the job's condition), switches it on.
    # Crossed, the kernel kept "off" while both threads believed "on": the next answer
    # was never read and its job timed out at the deadline (seen once in the suite:
    # 8 threads x 40 jobs, every job after the stall a timeout).
    with make_pool(job_timeout_ms=10_000) as p:
        manager = p._running()
        first = p.submit(G + "sleep", 0.3)
        worker = first.worker  # type: ignore[attr-defined]
        assert worker is not None
        caller = threading.Thread(target=first.result, daemon=True)
        caller.start()
        # The caller holds the worker's lock while it waits in recv.
        assert wait_for(lambda: not _acquired_and_released(worker.rlock))
        second = p.submit(G + "sleep", 0.1)  # queued: the one worker is busy
        # Its caller finds no worker to read and waits on the job's condition: the
        # manager must read the answer for it.
        got: list[JobResult] = []
        waiter = threading.Thread(target=lambda: got.append(second.result()), daemon=True)
        waiter.start()
        assert wait_for(lambda: second.watched)  # type: ignore[attr-defined]
        crossing = _CrossingEpoll(manager.ep, manager.disp.manager_ident)
        manager.ep = manager.disp.ep = crossing  # type: ignore[assignment]
        crossing.fd = worker.fd
        # Watching the first job too sends the manager to the socket, which it finds
        # locked: its switch-off then waits for the caller's switch-on, which comes
        # when the caller hands the worker the second job.
        first.add_done_callback(lambda f: None)
        caller.join(10)
        assert crossing.crossed.wait(5)
        waiter.join(30)
        assert got and got[0].outcome == "ok", got
        # Read when it came, not found at the deadline (10 s; the job sleeps 0.1 s).
        assert got[0].wall_ms < 5000, got


def _acquired_and_released(lock: Any) -> bool:
    if lock.acquire(False):
        lock.release()
        return True
    return False
