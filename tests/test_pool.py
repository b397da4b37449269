"""GuardPool against real misbehaving guard code: real processes, real signals, no mocks.

Bounds are deliberately generous (a 100 ms deadline must be answered within 1 s):
the machine is shared, and the overshoot itself is measured by bench/bench_pool.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from guardpool import GuardPool, JobResult, Verdict
from tests import waiting
from tests.processes import gone

# The workers import "tests.pool_guards" through the host's sys.path (the zygote gets a
# copy); `pytest` puts only tests/ on it, so add the repository root.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

G = "tests.pool_guards:"
# Preloaded in the zygote (as root): workers run as an unprivileged uid, which may not
# be able to read the interpreter's own library (e.g. a pyenv under /root).
PRELOAD = ["tests.pool_guards"]


def make_pool(**kw: Any) -> GuardPool:
    return GuardPool(preload=PRELOAD, **kw)


# This module's waits are bounded at 3 s (tests/waiting.py's default is 5 s).
wait_for = functools.partial(waiting.wait_for, timeout=3.0)


@pytest.fixture(scope="module")
def pool() -> Iterator[GuardPool]:
    with make_pool(workers=2, job_timeout_ms=2000, job_cpu_ms=2000, memory_mb=256) as p:
        yield p


def run(pool: GuardPool, fn: str, value: Any = None, **kw: Any) -> JobResult:
    return pool.submit(G + fn, value, **kw).result(timeout=10)


# -- the ordinary path ---------------------------------------------------------------------


def test_submit_returns_value_and_times(pool: GuardPool) -> None:
    result = run(pool, "double", 21)
    assert result.outcome == "ok"
    assert result.value == 42
    assert result.wall_ms > 0
    assert result.cpu_ms >= 0
    assert result.worker_pid > 0


def test_large_input_round_trips(pool: GuardPool) -> None:
    payload = "x" * 900_000  # several socket buffers: exercises the pending-output path
    assert run(pool, "echo", payload).value == payload


def test_large_inputs_queued_behind_busy_workers_are_written_by_the_manager(
    pool: GuardPool,
) -> None:
    # Submitted at once, most wait for a worker, and the manager writes them: a frame
    # larger than the socket buffer leaves the rest pending, and the jobs socket is
    # watched for room (EPOLLOUT) until it is all out. Each job's answer is its own.
    payloads = [chr(ord("a") + i) * 700_000 for i in range(6)]
    futures = [pool.submit(G + "echo", p) for p in payloads]
    assert [f.result(timeout=30).value for f in futures] == payloads
    assert run(pool, "double", 21).value == 42  # nothing left half written


# -- one test per misbehaviour -------------------------------------------------------------


@pytest.mark.parametrize("fn", ["spin", "native_hang", "sleep"])
def test_deadline_kills_whatever_the_guard_is_doing(pool: GuardPool, fn: str) -> None:
    started = time.monotonic()
    result = run(pool, fn, 30, timeout_ms=100)
    elapsed = time.monotonic() - started
    assert result.outcome == "timeout"
    assert result.limit == "wall"
    assert result.signal == signal.SIGKILL
    assert elapsed < 1.0
    assert wait_for(lambda: gone(result.worker_pid))
    assert run(pool, "double", 2).value == 4  # the pool is whole again


def test_segfault_is_a_crash_and_the_pool_stays_at_n_workers(pool: GuardPool) -> None:
    result = run(pool, "segfault")
    assert result.outcome == "crash"
    assert result.signal == signal.SIGSEGV
    assert wait_for(lambda: pool.stats().workers == 3)  # 2 + the pre-forked spare
    assert run(pool, "double", 3).value == 6


def test_exit_code_is_reported(pool: GuardPool) -> None:
    result = run(pool, "exit3")
    assert (result.outcome, result.exit_code, result.signal) == ("crash", 3, None)


def test_crash_is_not_retried(pool: GuardPool) -> None:
    before = pool.stats().crashed
    assert run(pool, "exit3").outcome == "crash"
    assert pool.stats().crashed == before + 1


def test_raising_is_an_error_with_the_reason(pool: GuardPool) -> None:
    result = run(pool, "raises")
    assert result.outcome == "error"
    assert "ValueError: bad input" in result.error


def test_returning_garbage_is_an_error(pool: GuardPool) -> None:
    result = run(pool, "unserialisable")
    assert result.outcome == "error"
    assert "not serialisable" in result.error


def test_cpu_budget_is_distinct_from_wall_deadline(pool: GuardPool) -> None:
    started = time.monotonic()
    result = run(pool, "native_hang", timeout_ms=5000, cpu_ms=150)
    assert result.outcome == "timeout"
    assert result.limit == "cpu"
    assert result.signal == signal.SIGPROF
    assert time.monotonic() - started < 2.0


def test_cpu_timer_left_over_from_a_job_never_ends_an_idle_worker() -> None:
    # A worker may leave the CPU timer armed after a job when enough budget is left
    # (the next job re-arms it). One that used most of its budget must not leave a
    # timer that fires while the worker idles or starts the next job.
    with make_pool(workers=1, job_timeout_ms=5000) as p:
        first = p.submit(G + "burn", 170, cpu_ms=250).result(timeout=10)
        assert first.outcome == "ok", first
        time.sleep(0.3)
        for ms in (0, 60, 0):
            after = p.submit(G + "burn", ms, cpu_ms=250).result(timeout=10)
            assert after.outcome == "ok", after
            assert after.value == first.value  # the same worker, still alive
        # A timer left armed with plenty of budget is replaced by the next job's own.
        assert p.submit(G + "echo", 1, cpu_ms=5000).result(timeout=10).outcome == "ok"
        result = p.submit(G + "native_hang", None, cpu_ms=150).result(timeout=10)
        assert (result.outcome, result.limit) == ("timeout", "cpu")
        assert p.stats().crashed == 0


def test_a_forked_child_returning_from_the_guard_never_answers(pool: GuardPool) -> None:
    crashed = pool.stats().crashed
    first = run(pool, "child_returns")
    assert first.outcome == "ok"
    # The child left through the worker's at-fork guard instead of answering the job a
    # second time (which the host would treat as a protocol violation and kill for).
    again = run(pool, "pid")
    second = run(pool, "pid")
    assert first.value in (again.value, second.value)
    assert pool.stats().crashed == crashed


def test_memory_bomb_hits_the_address_space_limit() -> None:
    with make_pool(workers=1, memory_mb=160, job_timeout_ms=10_000, job_cpu_ms=10_000) as p:
        result = p.submit(G + "memory_bomb", None).result(timeout=20)
        assert result.outcome == "error"
        assert result.limit == "memory"
        assert p.submit(G + "double", 5).result(timeout=10).value == 10


def test_bounded_fork_bomb_leaves_no_descendant(pool: GuardPool, shared_dir: Path) -> None:
    pidfile = shared_dir / "pids"
    result = run(pool, "fork_bomb", [50, str(pidfile)], timeout_ms=1500)
    assert result.outcome == "timeout"
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) >= 40  # most of them had time to start
    assert wait_for(lambda: all(gone(p) for p in pids))


def test_escaping_grandchild_is_killed(pool: GuardPool, shared_dir: Path) -> None:
    pidfile = shared_dir / "pid"
    result = run(pool, "escaping_grandchild", str(pidfile), timeout_ms=1500)
    assert result.outcome == "timeout"
    grandchild = int(pidfile.read_text())
    assert wait_for(lambda: gone(grandchild))


def test_a_worker_that_left_its_process_group_is_still_killed(pool: GuardPool) -> None:
    # killpg misses it; the kill through its pidfd (and the cgroup) does not. A CPU
    # budget far beyond the wait below, so that only the kill can end it.
    result = run(pool, "leaves_its_group", timeout_ms=300, cpu_ms=60_000)
    assert result.outcome == "timeout"
    assert wait_for(lambda: gone(result.worker_pid))
    assert run(pool, "double", 2).value == 4


def test_a_killed_workers_cleanup_and_replacement_wait_while_the_spare_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from guardpool.runner import lifecycle

    # A second instead of 10 ms, so the wait can be seen.
    monkeypatch.setattr(lifecycle, "SPAWN_DEFER_S", 1.0)
    with make_pool(workers=1) as p:
        assert wait_for(lambda: p.stats().workers == 2)  # 1 + the spare
        spawned = p.stats().spawned
        manager = p._manager
        assert manager is not None
        tid = manager.thread.native_id
        cpu_before = _thread_cpu_ns(tid)
        killed = run(p, "spin", timeout_ms=100)
        assert killed.outcome == "timeout"
        # The SIGKILL is not deferred: the worker dies at once.
        assert wait_for(lambda: gone(killed.worker_pid), timeout=2)
        # The spare serves the next job at once, on another worker.
        served = run(p, "double", 2)
        assert served.value == 4 and served.worker_pid != killed.worker_pid
        time.sleep(0.2)
        # Neither the fork of a replacement nor the cleanup has happened yet ...
        assert p.stats().spawned == spawned
        assert killed.worker_pid in {w.pid for w in manager.dying}
        # ... and the dead worker's descriptors are no longer watched: a level-triggered
        # epoll would otherwise wake the manager again and again meanwhile.
        assert _thread_cpu_ns(tid) - cpu_before < 100_000_000
        # Then both come.
        assert wait_for(lambda: p.stats().spawned == spawned + 1)
        assert wait_for(lambda: p.stats().workers == 2)
        assert not manager.dying
        assert run(p, "double", 3).value == 6


def _thread_cpu_ns(tid: int | None) -> int:
    """A thread of this process's CPU time so far (exact, from schedstat)."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def test_with_no_spare_left_a_killed_worker_is_replaced_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from guardpool.runner import lifecycle

    monkeypatch.setattr(lifecycle, "SPAWN_DEFER_S", 600.0)
    with make_pool(workers=1) as p:
        assert wait_for(lambda: p.stats().workers == 2)
        # The first kill leaves the spare idle (its replacement waits SPAWN_DEFER_S);
        # the second kills the spare: nobody is left to answer, so both come at once.
        assert run(p, "spin", timeout_ms=100).outcome == "timeout"
        assert run(p, "spin", timeout_ms=100).outcome == "timeout"
        assert wait_for(lambda: p.stats().workers == 2)
        assert run(p, "double", 2).value == 4


def test_input_too_large_is_refused_before_sending() -> None:
    with make_pool(workers=1, max_input_bytes=1000) as p:
        future = p.submit(G + "echo", "y" * 2000)
        assert future.done()
        result = future.result()
        assert (result.outcome, result.limit) == ("error", "input")
        assert "2000 bytes > max_input_bytes 1000" in result.error
        assert p.stats().refused == 1


def test_deadline_counts_from_submit_not_from_start() -> None:
    with make_pool(workers=1, job_timeout_ms=5000) as p:
        blocker = p.submit(G + "sleep", 0.6)
        started = time.monotonic()
        queued = p.submit(G + "double", 1, timeout_ms=100).result(timeout=5)
        assert queued.outcome == "timeout"
        assert queued.worker_pid == 0  # never ran
        assert "before the job started" in queued.error
        assert time.monotonic() - started < 0.5
        assert blocker.result(timeout=5).value == "slept"


def test_neighbours_are_unaffected_by_a_kill(pool: GuardPool) -> None:
    hanging = pool.submit(G + "spin", None, timeout_ms=400)
    results = [run(pool, "double", i) for i in range(20)]
    assert [r.value for r in results] == [i * 2 for i in range(20)]
    assert hanging.result(timeout=5).outcome == "timeout"
    assert all(r.outcome == "ok" for r in results)


def test_jobs_waiting_behind_a_killed_job_run_elsewhere_not_twice() -> None:
    with make_pool(workers=2, job_timeout_ms=5000) as p:
        hung = [p.submit(G + "spin", None, timeout_ms=300) for _ in range(2)]
        waiting = [p.submit(G + "pid", None) for _ in range(4)]  # pipelined behind the spins
        results = [f.result(timeout=10) for f in waiting]
        assert [f.result().outcome for f in hung] == ["timeout", "timeout"]
        assert all(r.outcome == "ok" for r in results)
        killed = {f.result().worker_pid for f in hung}
        assert not killed & {r.value for r in results}  # ran on the replacements
        assert p.stats().completed == 6


# -- recycling -----------------------------------------------------------------------------


def test_worker_recycled_after_max_jobs() -> None:
    with make_pool(workers=1, max_jobs_per_worker=3) as p:
        pids = [p.submit(G + "pid", None).result(timeout=5).value for _ in range(7)]
        assert len(set(pids[:3])) == 1
        assert pids[3] != pids[2]
        assert len(set(pids)) == 3
        assert p.stats().recycled == 2


def test_worker_recycled_when_rss_passes_threshold() -> None:
    with make_pool(workers=1, memory_mb=256, max_rss_mb=60) as p:
        first = p.submit(G + "hold", 80).result(timeout=10)
        assert first.outcome == "ok"
        second = p.submit(G + "pid", None).result(timeout=10)
        assert second.value != first.value


# -- concurrency ---------------------------------------------------------------------------


def test_many_threads_submit_at_once(pool: GuardPool) -> None:
    results: dict[int, list[int]] = {}

    def client(n: int) -> None:
        futures = [pool.submit(G + "double", n * 1000 + i) for i in range(40)]
        results[n] = [f.result(timeout=20).value for f in futures]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: [2 * (n * 1000 + i) for i in range(40)] for n in range(8)}


def test_asyncio_gather(pool: GuardPool) -> None:
    async def main() -> list[JobResult]:
        return await asyncio.gather(*(pool.asubmit(G + "double", i) for i in range(50)))

    results = asyncio.run(main())
    assert [r.value for r in results] == [2 * i for i in range(50)]


def test_every_way_to_wait_on_a_job_future(pool: GuardPool) -> None:
    # The future makes its condition only when a thread other than the one reading
    # the answer needs it: each way of waiting must still see the answer exactly once.
    f = pool.submit(G + "double", 1)
    assert isinstance(f, concurrent.futures.Future)
    assert f.result(timeout=10).value == 2
    assert f.done() and not f.cancelled() and f.exception() is None
    assert "finished" in repr(f)

    got: list[Any] = []
    called = threading.Event()

    def callback(fut: concurrent.futures.Future[JobResult]) -> None:
        got.append(fut.result().value)
        called.set()

    f = pool.submit(G + "sleep", 0.05)
    f.add_done_callback(callback)
    assert called.wait(10) and got == ["slept"]
    f.add_done_callback(callback)  # on a finished future: called at once
    assert got == ["slept", "slept"]

    fs = [pool.submit(G + "double", i) for i in range(6)]
    done, not_done = concurrent.futures.wait(fs, timeout=10)
    assert not not_done and sorted(x.result().value for x in done) == [0, 2, 4, 6, 8, 10]
    fs = [pool.submit(G + "double", i) for i in range(6)]
    answers = [x.result().value for x in concurrent.futures.as_completed(fs, timeout=10)]
    assert sorted(answers) == [0, 2, 4, 6, 8, 10]

    f = pool.submit(G + "double", 5)
    end = time.monotonic() + 10
    while not f.done() and time.monotonic() < end:  # polled: the manager reads the answer
        time.sleep(0.005)
    assert f.result(timeout=0).value == 10

    f = pool.submit(G + "double", 6)
    other: list[Any] = []
    reader = threading.Thread(target=lambda: other.append(f.result(timeout=10).value))
    reader.start()
    reader.join()
    assert other == [12] and f.result(timeout=0).value == 12

    f = pool.submit(G + "sleep", 0.2)
    with pytest.raises(concurrent.futures.TimeoutError):
        f.result(timeout=0.01)
    assert f.result(timeout=10).value == "slept"
    assert f.exception(timeout=0) is None


def test_a_queued_job_can_be_cancelled() -> None:
    with make_pool(workers=1) as p:
        blocker = p.submit(G + "sleep", 0.3)
        queued = p.submit(G + "double", 1)  # one job at a time: this one waits
        assert queued.cancel()
        assert queued.cancelled()
        assert blocker.result(timeout=10).value == "slept"
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result(timeout=1)
        assert not blocker.cancel()  # finished: too late
        assert p.submit(G + "double", 2).result(timeout=10).value == 4
        assert p.stats().completed == 2


# -- logs ----------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_worker_logs_reach_host_handlers(pool: GuardPool) -> None:
    handler = _Collect()
    logger = logging.getLogger("pool_guards.logs")
    logger.addHandler(handler)
    try:
        result = run(pool, "logs", "hello")
    finally:
        logger.removeHandler(handler)
    assert result.value == "logged"
    assert [r.getMessage() for r in handler.records] == ["from worker: hello"]
    assert handler.records[0].process == result.worker_pid
    assert handler.records[0].levelno == logging.WARNING


# -- hardening -----------------------------------------------------------------------------


def test_standard_hardening_measures_are_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPOOL_TEST_SECRET", "hunter2")
    with make_pool(workers=1, memory_mb=200) as p:
        info = p.submit("guardpool.worker.probe:probe", None).result(timeout=5).value
        workdir = info["cwd"]
    assert info["own_process_group"] is True
    assert info["no_new_privs"] is True
    assert info["rlimits"]["AS"] == 200 << 20
    assert info["rlimits"]["CORE"] == 0
    assert info["rlimits"]["NOFILE"] == 256
    assert "GUARDPOOL_TEST_SECRET" not in info["environment"]
    assert info["stdin"] == "/dev/null"
    assert info["open_fds"][:5] == [0, 1, 2, 3, 4]
    # 0-2, the worker's two sockets (jobs in, answers out), the listdir fd (+ O_PATH fds
    # for import directories the unprivileged uid could not reach otherwise, see
    # worker/startup.py)
    assert len(set(info["open_fds"]) - set(info["import_dir_fds"])) <= 6
    assert "guardpool-" in workdir
    assert not os.path.exists(workdir)  # private working directory removed


def test_strict_blocks_network() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.3)
    try:
        with make_pool(workers=1, hardening="standard") as p:
            assert p.submit(G + "connect", port).result(timeout=5).value == "connected"
            listener.accept()[0].close()
        with make_pool(workers=1, hardening="strict") as p:
            result = p.submit(G + "connect", port).result(timeout=5)
            info = p.submit("guardpool.worker.probe:probe", None).result(timeout=5).value
        assert result.outcome == "error"
        with pytest.raises(TimeoutError):
            listener.accept()
        assert info["seccomp_mode"] == 2
        assert info["netns"] != os.readlink("/proc/self/ns/net")
        assert info["network_error"]
    finally:
        listener.close()


# -- guard jobs ----------------------------------------------------------------------------

GUARDS: dict[str, Any] = {
    "pool": {"workers": 1, "job_timeout_ms": 2000, "preload": PRELOAD},
    "guard": [
        {"name": "ctx", "call": G + "guard_context"},
        {"name": "none", "call": G + "guard_none"},
        {"name": "bool", "call": G + "guard_bool"},
        {"name": "rx", "call": G + "guard_regex"},
        {"name": "slow", "call": G + "guard_slow", "timeout_ms": 100},
        {"name": "slow-open", "call": G + "guard_slow", "timeout_ms": 100, "on_timeout": "allow"},
        {"name": "nest", "call": G + "guard_nested_slow", "timeout_ms": 1500},
        {"name": "keys", "deny_regex": ["AKIA[0-9A-Z]{16}"]},
        {"name": "nest-rx", "call": G + "guard_nested_regex"},
    ],
}


@pytest.fixture(scope="module")
def guard_pool() -> Iterator[GuardPool]:
    with GuardPool.from_config(GUARDS) as p:
        yield p


def test_guard_sees_its_context(guard_pool: GuardPool) -> None:
    result = guard_pool.submit_guard(
        "ctx", "x", labels=("op:a", "op:b"), run_id="r1", principal="al", phase="after"
    ).result(timeout=5)
    assert result.value == Verdict.deny("r1|al|after|op:a,op:b")


def test_guard_returning_none_is_an_error(guard_pool: GuardPool) -> None:
    result = guard_pool.submit_guard("none", "x").result(timeout=5)
    assert result.outcome == "error"
    assert result.error == "returned NoneType, expected Verdict or bool"


def test_guard_bool_and_regex(guard_pool: GuardPool) -> None:
    assert guard_pool.submit_guard("bool", "bad").result(timeout=5).value.action == "deny"
    assert guard_pool.submit_guard("bool", "ok").result(timeout=5).value == Verdict.allow()
    key = "AKIA" + "A" * 16
    assert guard_pool.submit_guard("rx", key).result(timeout=5).value.reason == "aws key"
    nested = guard_pool.submit_guard("nest-rx", key).result(timeout=5).value
    assert nested.action == "deny"


def test_guard_timeout_uses_the_guard_spec(guard_pool: GuardPool) -> None:
    result = guard_pool.submit_guard("slow", "x").result(timeout=5)
    assert (result.outcome, result.limit) == ("timeout", "wall")
    assert result.wall_ms < 1000


def test_nested_guard_deadline_is_its_own_and_denies(guard_pool: GuardPool) -> None:
    result = guard_pool.submit_guard("nest", "x").result(timeout=5)
    assert result.outcome == "ok"
    action, reason, took, remaining = result.value.reason.split(":")
    assert action == "deny"
    assert "timed out" in reason
    assert 90 <= int(took) < 600
    assert int(remaining) > 500  # the outer job still had its own time left


def test_unknown_guard_is_rejected(guard_pool: GuardPool) -> None:
    with pytest.raises(KeyError):
        guard_pool.submit_guard("nope", "x")


# -- leaks and lifetime --------------------------------------------------------------------


def leak_scenario(name: str) -> dict[str, Any]:
    """Run tests/leak_host.py in a fresh interpreter: see there why not in this one."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "leak_host.py"), name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_100_timeouts_leak_no_process_and_no_fd() -> None:
    got = leak_scenario("timeouts")
    assert (got["outcomes"], got["n_outcomes"], got["timeouts"]) == (["timeout"], 100, 100)
    # Kills happened, so the leak checks below mean something. Not ">= 50": on a
    # loaded machine (load 12 on 2 cores, seen in a fresh-clone CI run) a 30 ms
    # deadline often passes while the job is still queued behind a respawn, and a
    # queued job times out without a kill (42 of 50 pairs killed there).
    assert got["killed"] >= 10
    # zygote + 2 workers + the spare, nothing else; the warm pool's fds, no more
    assert got["steady"], got
    assert (got["children_warm"], got["children_running"]) == (4, 4)
    assert got["fds_after_kills"] == got["fds_running"]
    assert got["children_after"] == []
    assert (got["fds_gained"], got["fds_lost"]) == ([], [])
    assert got["new_shm"] == []


def test_shutdown_leaves_nothing_behind() -> None:
    got = leak_scenario("shutdown")
    assert got["children_running"] == 4  # zygote, 2 workers, spare
    assert got["in_flight_error"] == "pool shut down"
    assert got["children_after"] == []
    assert (got["fds_gained"], got["fds_lost"]) == ([], [])
    assert got["workdir_left"] is False
    assert got["submit_after"].startswith("RuntimeError")


HOST_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from guardpool import GuardPool
    pool = GuardPool(workers=2, preload=["tests.pool_guards"]).start()
    busy = pool.submit("tests.pool_guards:sleep", 30)
    pids = [pool.submit("tests.pool_guards:pid", None).result().value]
    print(pool._manager.zygote.pid, *pids, flush=True)
    time.sleep(0.2)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), 9)
    # "exit": fall off the end without shutdown(); atexit must clean up
    """
)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_host_exiting_without_close_leaves_no_process(how: str, tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT.format(root=str(Path(__file__).parent.parent)))
    proc = subprocess.run(
        [sys.executable, str(script), how], capture_output=True, text=True, timeout=30
    )
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2, proc.stderr
    zygote = psutil.Process(pids[0]) if psutil.pid_exists(pids[0]) else None
    assert wait_for(lambda: all(gone(p) for p in pids))
    assert zygote is None or not zygote.is_running() or gone(pids[0])


def test_stats_and_idempotent_start(pool: GuardPool) -> None:
    assert pool.start() is pool
    stats = pool.stats()
    assert stats.workers == 3  # 2 + the pre-forked spare
    assert stats.spawned >= 2
    assert stats.queued == 0


def test_cpu_budget_holds_when_trivial_jobs_leave_the_timer_armed() -> None:
    # Trivial jobs with one budget leave the CPU timer armed (budget + a slack; armed
    # again once half the slack has gone by): every job must still get its whole
    # budget, also after jobs that used much of theirs, and a hang must end at it.
    with make_pool(workers=1, job_timeout_ms=5000) as p:
        for _ in range(50):
            assert p.submit(G + "echo", 1, cpu_ms=500).result(timeout=10).outcome == "ok"
        for _ in range(3):  # 180 of 500 ms each: a timer left from the last would fire
            burnt = p.submit(G + "burn", 180, cpu_ms=500).result(timeout=10)
            assert burnt.outcome == "ok", burnt
        for _ in range(50):
            assert p.submit(G + "echo", 1, cpu_ms=150).result(timeout=10).outcome == "ok"
        started = time.monotonic()
        result = p.submit(G + "native_hang", None, cpu_ms=150).result(timeout=10)
        assert (result.outcome, result.limit) == ("timeout", "cpu"), result
        assert time.monotonic() - started < 2.0
