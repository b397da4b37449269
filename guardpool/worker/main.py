"""The worker: a forked child of the zygote that serves jobs on its own socket.

A worker is single-threaded and blocking: read one frame, run it, write the
answer. All supervision (deadlines, kills, recycling) lives in the host; the
worker only arms the kernel CPU timer around each job, because ``ITIMER_PROF``
with SIGPROF at its default disposition terminates the process even while it
is inside a C call that never returns to the interpreter.

Per job the worker makes two system calls: ``recv`` (sleep until the job comes,
and read it; see ``Channel`` for why that needs two socketpairs) and ``send`` (the
answer), plus ``getrusage`` (CPU used and peak RSS) for every job that took
``FAST_JOB_MS`` or more and every ``SYNC_EVERY``-th short one, and ``setitimer``
(arm the CPU budget) when the job's budget differs from the last one or some
milliseconds of CPU have gone by since it was armed (``ARM_SLACK_MS``). Each costs
1.5-3.5 µs between two context switches, as much as a trivial job's Python work.
So the job's starting CPU reading is the previous job's closing one, a short job's
CPU time is its wall time (see ``FAST_JOB_MS``), a forked child is recognised by an
at-fork hook rather than a ``getpid`` per job, and the timer is disarmed only when
less than ``KEEP_ARMED_MS`` of the budget is left (see ``run``). The answer's frame
is encoded into one buffer kept for the worker's life.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from guardpool.policy import inputs, poolsettings
from guardpool.policy.verdict import normalize
from guardpool.worker import cgroups, context, protocol, sandbox

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard


class Channel:
    """Blocking, length-framed reads and writes on the worker's two sockets.

    Jobs come in on one socketpair and answers go out on another. With one pair for
    both, the host reading an answer frees room in the worker's send buffer, and the
    kernel wakes whoever sleeps in ``recv`` on that socket ("room to write"): the worker
    had to sleep in ``poll`` (which filters that wake-up) and then ``recv``, two system
    calls per job; and the host could not sleep in ``recv`` either, since the worker
    reading a job woke it the same way. With two pairs each side sleeps in one
    ``recv`` (see dispatch.py).
    """

    def __init__(self, jobs: socket.socket, answers: socket.socket) -> None:
        self.sock = jobs
        self.out = answers
        self.reader = protocol.FrameReader()
        # ext_hook: a job's input may carry text with a lone surrogate (policy/inputs.pack).
        self.decoder = msgspec.msgpack.Decoder(protocol.HostMsg, ext_hook=inputs.unpack_ext)
        self.pending: collections.deque[protocol.HostMsg] = collections.deque()
        self.encoder = msgspec.msgpack.Encoder()
        # One receive buffer for the worker's life: ``recv(256 KiB)`` would mmap, shrink
        # and unmap a fresh bytes object on every job (three syscalls each time). Made on
        # the first read, so what a worker needs to start up stays what it was.
        self.rbuf = bytearray()
        self.rview = memoryview(self.rbuf)

    def send(self, msg: msgspec.Struct) -> None:
        self.out.sendall(protocol.frame(self.encoder, msg))

    def recv(self) -> protocol.HostMsg | None:
        """The next job, or None at EOF (the host closed our pipe: stop)."""
        while not self.pending:
            if not self.rbuf:
                self.rbuf = bytearray(1 << 18)
                self.rview = memoryview(self.rbuf)
            n = self.sock.recv_into(self.rbuf)
            if not n:
                return None
            self.pending.extend(self.reader.decode_chunk(self.rview[:n], self.decoder))
        return self.pending.popleft()


class ForwardingHandler(logging.Handler):
    """Sends every record to the host as a ``Log`` message over the worker's own pipe.

    No lock is shared with any other process: a worker killed mid-record can at
    worst truncate its own pipe, which the host then discards with the worker.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = ""
            if record.exc_info:
                exc_text = logging.Formatter().formatException(record.exc_info)
            self.channel.send(
                protocol.Log(
                    name=record.name,
                    level=record.levelno,
                    msg=record.getMessage(),
                    pathname=record.pathname,
                    lineno=record.lineno,
                    func=record.funcName or "",
                    created=record.created,
                    exc_text=exc_text,
                    pid=os.getpid(),
                )
            )
        except Exception:
            self.handleError(record)


# After a job, the CPU timer stays armed when at least this much of its budget is left:
# the next job re-arms it anyway, and the idle worker blocked in recv uses no CPU, so
# the timer can only fire if the few microseconds of work between answering and
# re-arming (send the answer, look for the next job for at most IDLE_SPIN_S, decode
# it) grew to 100 ms. Below this the timer is disarmed as before, so a job that used
# most of its budget cannot leave a timer that fires while the worker waits for (or
# decodes) its next job.
KEEP_ARMED_MS = 100.0

# The timer is armed with the job's budget plus a slack (ARM_SLACK_MS, or a 32nd of a
# smaller budget) and not armed again for a job with the same budget while less than
# half that slack of CPU has gone by since: one system call less per trivial job. A job
# thus gets at least its budget (the other half of the slack covers what runs between
# our last CPU reading and the job's start: answering, reading, decoding) and at most
# budget + slack; the kernel checks CPU timers only at its tick (4 ms here) anyway.
# Frames above BIG_FRAME take long enough to decode or encode that the job re-arms.
ARM_SLACK_MS = 4.0
BIG_FRAME = 64 * 1024

# A job that took less than this wall time in the worker (from waking for it to its
# answer) is counted at that wall time instead of a ``getrusage`` reading: the worker
# is single-threaded, so its CPU time cannot exceed its wall time, and the reading
# (2-3.5 us, a system call) is a tenth of such a job's round trip. Every SYNC_EVERY-th
# job, every longer one and every failed one reads ``getrusage`` as before, which puts
# the CPU total (and the peak RSS that decides recycling) right again: the estimate
# of the CPU total is off by at most the (wall - CPU) of the short jobs since. The
# worker's own work between short jobs (receiving, answering) is counted to none of
# them; a longer job's reading may include it (at most SYNC_EVERY jobs' worth).
FAST_JOB_MS = 0.2
SYNC_EVERY = 15

# After answering, a worker looks for its next job without sleeping for this long
# (non-blocking reads, yielding the CPU between them), then sleeps in ``recv``. On a
# VM a process asleep on an idle vCPU is woken through the hypervisor (the vCPU
# halted), which cost 40-50 us per message here; a call made back to back with the
# last one then finds the worker awake. Measured with a socketpair echo on two pinned
# CPUs of a 2-vCPU VM: 84 -> 25 us per round trip; on one CPU 15.3 -> 14.6 us (the
# yield lets the caller run). Bounded: at most this much CPU per job, and none once
# the worker sleeps. bench/bench_pool.py --placement measures it in the pool.
# ``[pool] idle_poll_us`` sets it (setup_worker, poolsettings.idle_look_s); 0: sleep at once.
IDLE_SPIN_S = 50e-6


_CallJob = protocol.CallJob
_Done = protocol.Done
_pack_header = protocol.HEADER.pack_into
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)

# Set in a process forked from the worker (os.fork in guard code runs at-fork hooks):
# such a child must never come back into the job loop and answer on the worker's pipe.
_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


def _rss_kb() -> int:
    # Peak RSS: one getrusage call (no /proc read on every job). Peak is the right
    # signal for recycling: memory a guard touched once is usually still held.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _usage() -> tuple[float, int]:
    """CPU time used so far (ms) and peak RSS (KiB), from one ``getrusage`` call."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (ru.ru_utime + ru.ru_stime) * 1000.0, ru.ru_maxrss


def setup_worker(
    fds: tuple[int, ...],
    workdir: str,
    setup: protocol.Setup,
    seccomp: bool,
    cgroup: cgroups.WorkerCgroup,
) -> tuple[socket.socket, socket.socket]:
    """Make this freshly forked process a sandboxed worker; returns its two sockets
    (jobs in, answers out), from the host's ``fds``.

    Everything that needs root (the cgroup, rlimits) happens first, then the privilege
    drop, then the measures that must outlive it; no guard code has run yet.
    """
    zygote = os.getppid()
    # Die with the zygote (and so with the host): no orphaned worker can outlive them.
    sandbox.set_pdeathsig()
    os.setpgid(0, 0)  # own process group: one killpg takes the worker and its children
    for sig in (signal.SIGCHLD, signal.SIGPROF, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's to handle
    signal.set_wakeup_fd(-1)
    # Only fds 0-2 and the worker's two sockets survive: no zygote control socket, no
    # neighbour's pipe (each worker's pipe reaches exactly one worker).
    jobs_fd, answers_fd = fds
    if answers_fd == 3:
        answers_fd = os.dup(answers_fd)  # not overwritten by the first dup2
    os.dup2(jobs_fd, 3)
    os.dup2(answers_fd, 4)
    os.closerange(5, 1 << 16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sandbox.set_workdir(workdir)
    import tempfile

    tempfile.tempdir = workdir
    cgroups.join(cgroup)
    sandbox.apply_rlimits(setup.memory_mb)
    global IDLE_SPIN_S
    IDLE_SPIN_S = poolsettings.idle_look_s(setup.idle_poll_us)
    if not cgroup.cpu:
        # No CPU cgroup to weigh a fork bomb as one task: lower the priority instead, so
        # its many runnable processes cannot starve the manager thread that kills them
        # (children inherit the nice value). With a CPU cgroup a guard keeps nice 0.
        os.setpriority(os.PRIO_PROCESS, 0, sandbox.WORKER_NICE)
    _EXISTING[:] = [p for p in sys.path if os.path.exists(p)]  # as root: what there is
    if setup.uid >= 0:
        dirs = _open_import_dirs()
        sandbox.drop_privileges(setup.uid, setup.gid)
        _reach_import_dirs(dirs)
        sandbox.set_pdeathsig()  # a uid change cleared it
        if os.getppid() != zygote:
            raise SystemExit(1)  # the zygote died in between: the death signal came too late
    sandbox.prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1)
    if seccomp:
        try:
            sandbox.install_seccomp()
        except OSError as exc:  # reported by the doctor; the other measures still hold
            sandbox.STATUS["seccomp"] = str(exc)
    jobs = socket.socket(fileno=3)
    jobs.setblocking(True)
    answers = socket.socket(fileno=4)
    answers.setblocking(True)
    return jobs, answers


class Worker:
    def __init__(
        self,
        jobs: socket.socket,
        answers: socket.socket,
        guards: Mapping[str, CompiledGuard],
        regex_max_mem: int,
        log_level: int,
    ) -> None:
        self.channel = Channel(jobs, answers)
        self.pid = os.getpid()
        self.guards = guards
        self.regex_max_mem = regex_max_mem
        self.targets: dict[str, Callable[[Any], Any]] = {}
        root = logging.getLogger()
        for h in list(root.handlers):  # inherited from preload; output belongs to the host
            root.removeHandler(h)
        root.addHandler(ForwardingHandler(self.channel))
        root.setLevel(log_level)
        context.install_alarm_handler()
        # CPU time used so far (ms), from the last ``getrusage``: where the next job starts.
        self.cpu_total = 0.0
        # The CPU timer as last armed (see ARM_SLACK_MS): for which budget (-1: disarmed,
        # or re-arm in any case), the CPU total after which it is armed again, and the
        # earliest CPU total at which it fires.
        self.armed_budget = -1
        self.rearm_after = 0.0
        self.fires_at = 0.0
        # Short jobs left before the next exact reading, and the peak RSS last read.
        self.unsynced = 0
        self.rss_kb = 0
        self.encode_into = self.channel.encoder.encode_into
        self.out = bytearray(4)  # each answer's frame, reused (see run)
        os.register_at_fork(after_in_child=_mark_forked)

    def warm_up(self) -> None:
        """Run the per-job path once, answering nobody.

        A fresh fork shares the zygote's pages copy-on-write; the first job would pay
        the page faults of everything it touches (decoder, encoder, timers). Paying them
        here, before Ready, means a spare that replaces a killed worker serves at once.
        """
        raw = protocol.frame(
            self.channel.encoder,
            protocol.CallJob(0, "builtins:len", msgspec.Raw(b"\x90"), 1000, time.monotonic() + 1),
        )
        job = self.channel.decoder.decode(raw[4:])
        signal.setitimer(signal.ITIMER_PROF, 1.0)
        try:
            value = self._call(job)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        total, rss_kb = _usage()
        self.encode_into(_Done(0, value, 0.0, total, rss_kb), self.out, 4)
        _pack_header(self.out, 0, len(self.out) - 4)
        self.targets.pop("builtins:len", None)

    def serve(self) -> None:
        self.warm_up()
        try:
            self.cpu_total = _usage()[0]
            self.channel.send(
                protocol.Ready(pid=self.pid, cpu_total_ms=self.cpu_total, unreadable=_unreadable())
            )
            self._loop()
        except (BrokenPipeError, ConnectionResetError):
            return  # the host closed our pipe (a spare at shutdown): nothing to report

    def _loop(self) -> None:
        """Read a job, run it, answer: until EOF (the host closed our pipe)."""
        channel = self.channel
        if not channel.rbuf:
            # Made now, not at start-up: what a worker needs to get ready stays small.
            channel.rbuf = bytearray(1 << 18)
            channel.rview = memoryview(channel.rbuf)
        buf, view = channel.rbuf, channel.rview
        recv_into = channel.sock.recv_into
        decoder = channel.decoder
        decode = decoder.decode
        reader = channel.reader
        pending = channel.pending
        run = self.run
        header = protocol.HEADER.unpack_from
        clock = time.monotonic
        yield_cpu = os.sched_yield
        dontwait = socket.MSG_DONTWAIT
        spin = IDLE_SPIN_S
        while True:
            if pending:
                run(pending.popleft(), clock())
                continue
            n = -1
            if spin:
                spun = clock()
                end = spun + spin
                while True:  # the next job may come at once (see IDLE_SPIN_S)
                    try:
                        n = recv_into(buf, 0, dontwait)
                        break
                    except BlockingIOError:
                        if clock() >= end:
                            break
                        yield_cpu()
                woke = clock()
                # The look's CPU time is at most its wall time: counted in the running
                # total (not in the next job's), so the CPU timer is re-armed in time.
                self.cpu_total += (woke - spun) * 1000.0
            if n < 0:
                n = recv_into(buf)  # sleeps here until a job comes (see Channel)
                woke = clock()  # the job's wall time counts from here (see FAST_JOB_MS)
            if not n:
                return
            if n > 4 and not reader.buf and n == header(buf)[0] + 4:
                if n > BIG_FRAME:
                    self.armed_budget = -1  # its decoding counts: arm after it
                run(decode(view[4:n]), woke)  # one whole frame: the usual read
            else:
                self.armed_budget = -1
                pending.extend(reader.decode_chunk(view[:n], decoder))

    def _target(self, target: str) -> Callable[[Any], Any]:
        fn = self.targets.get(target)
        if fn is None:
            module, sep, attr = target.partition(":")
            if not sep or not module or not attr:
                raise ValueError(f"target {target!r} is not 'module:function'")
            fn = getattr(importlib.import_module(module), attr)
            self.targets[target] = fn
        return fn

    def _call(self, job: protocol.HostMsg) -> Any:
        if isinstance(job, protocol.CallJob):
            return self._target(job.target)(job.input)
        guard = self.guards.get(job.guard)
        if guard is None:
            raise LookupError(f"unknown guard {job.guard!r} (not in this pool's guard specs)")
        ctx = context.WorkerContext(
            self.guards,
            labels=job.labels,
            run_id=job.run_id,
            principal=job.principal,
            phase=job.phase,
            deadline=job.deadline,
            regex_max_mem=self.regex_max_mem,
        )
        result = guard.evaluate(job.input, ctx)
        verdict = normalize(result)
        if verdict is None:
            raise _BadReturn(f"returned {type(result).__name__}, expected Verdict or bool")
        return verdict

    def run(self, job: protocol.HostMsg, woke: float) -> None:
        """Run one job and answer it; ``woke``: when the worker woke for it (monotonic)."""
        # The previous job's closing reading, not a fresh clock call: the job's CPU then
        # also counts decoding it (microseconds), and the worker saves a system call.
        start = self.cpu_total
        if woke >= job.deadline:
            # It waited in our pipe behind a slow job and the host already answered it.
            self._fail(job.id, "deadline passed before start", "expired", 0.0, start, _rss_kb())
            return
        budget = job.cpu_ms
        if budget != self.armed_budget or start > self.rearm_after:
            # Replaces whatever is left of the previous job's timer (see ARM_SLACK_MS).
            slack = min(ARM_SLACK_MS, budget / 32)
            signal.setitimer(signal.ITIMER_PROF, (budget + slack) / 1000.0)
            self.armed_budget = budget
            self.rearm_after = start + slack / 2
            self.fires_at = start + budget + slack
        error: str | None = None
        kind: protocol.FailKind = "error"
        try:
            if type(job) is _CallJob:
                fn = self.targets.get(job.target)
                if fn is None:
                    fn = self._target(job.target)
                value = fn(job.input)
            else:
                value = self._call(job)
        except MemoryError:
            value, error, kind = None, "MemoryError: worker memory limit reached", "memory"
        except _BadReturn as exc:
            value, error = None, str(exc)
        except BaseException as exc:  # GuardTimeout, SystemExit too: the worker lives on
            value, error = None, _describe(exc)
        finally:
            if _forked:
                # A child the guard forked came back up into our code: it must never
                # answer on the worker's channel (the host would see a second answer).
                os._exit(0)
        wall = (time.monotonic() - woke) * 1000.0
        short = wall < FAST_JOB_MS and error is None
        if short and self.unsynced:
            # A short job: its wall time bounds its CPU time (see FAST_JOB_MS).
            self.unsynced -= 1
            total = start + wall
            rss_kb = self.rss_kb
        else:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            total = (ru.ru_utime + ru.ru_stime) * 1000.0
            # Peak: memory a guard touched once is usually still held.
            rss_kb = self.rss_kb = ru.ru_maxrss
            self.unsynced = SYNC_EVERY
        self.cpu_total = total
        if short:
            # Also the short job that takes the exact reading: ``start`` added up the
            # wall times of the short jobs before it, so ``total - start`` would give
            # it what they over-counted (it read 0 ms at times), not its own time.
            cpu = wall
        else:
            cpu = total - start
            if cpu < 0.0:
                cpu = 0.0  # the short jobs before it were counted at their wall time
        if self.fires_at - total < KEEP_ARMED_MS:
            signal.setitimer(signal.ITIMER_PROF, 0)
            self.armed_budget = -1
        if error is None:
            out = self.out
            try:
                # One buffer for every answer, its length written in front afterwards:
                # no body, header and frame allocated per job.
                done = _Done(job.id, value, cpu, total, rss_kb)
                try:
                    self.encode_into(done, out, 4)
                except _ENCODE_ERRORS:
                    # inputs.pack: a rewrite of hostile text, or a reason quoting it, may
                    # hold a lone surrogate (or an int past 64 bits); it travels as the
                    # input did.
                    del out[4:]
                    out += inputs.pack(self.channel.encoder, done)
                _pack_header(out, 0, len(out) - 4)
                if len(out) > BIG_FRAME:
                    self.armed_budget = -1  # its encoding counted after our CPU reading
            except BaseException as exc:
                # A list that contains itself, an object msgspec cannot encode:
                # the job failed, not the worker.
                error = f"result is not serialisable: {_describe(exc, where=False)}"
            else:
                self.channel.out.sendall(out)
                if len(out) > BIG_FRAME:
                    self.out = bytearray(4)  # do not keep a large answer's memory
                return
        self._fail(job.id, error, kind, cpu, total, rss_kb)

    def _fail(
        self,
        job_id: int,
        error: str,
        kind: protocol.FailKind,
        cpu: float,
        total: float,
        rss_kb: int,
    ) -> None:
        # The reason may quote hostile input: a lone surrogate must not stop the answer.
        text = error.encode("utf-8", "backslashreplace").decode("utf-8")
        self.channel.send(protocol.Failed(job_id, text, kind, cpu, total, rss_kb))


_EXISTING: list[str] = []  # sys.path entries that exist, seen before the privilege drop
IMPORT_DIR_FDS: list[int] = []  # O_PATH fds standing in for unreachable sys.path entries


def _open_import_dirs() -> dict[str, int]:
    """An O_PATH fd for each import directory, opened while still root."""
    fds: dict[str, int] = {}
    for entry in sys.path:
        if entry and entry not in fds:
            with contextlib.suppress(OSError):  # absent, or a zip file: nothing to keep
                fds[entry] = os.open(entry, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return fds


def _reach_import_dirs(fds: dict[str, int]) -> None:
    """Swap sys.path entries the new uid cannot reach for ``/proc/self/fd/N``.

    An interpreter installed below a private directory (pyenv under /root, mode 0700)
    is unreachable for an unprivileged uid, so every import not already done in the
    zygote would fail. The magic link jumps straight to the directory the fd holds;
    only the directories below it are permission-checked, and those are the world-
    readable library. Nothing else under the private directory becomes reachable.
    """
    used: set[int] = set()
    for i, entry in enumerate(sys.path):
        fd = fds.get(entry)
        if fd is None:
            continue
        try:
            os.stat(entry)
        except PermissionError:
            sys.path[i] = f"/proc/self/fd/{fd}"
            used.add(fd)
        except OSError:
            pass
    for fd in fds.values():
        if fd not in used:
            os.close(fd)
    IMPORT_DIR_FDS[:] = sorted(used)


def _unreadable() -> list[str]:
    """Import path entries this (unprivileged) process cannot reach: imports from there fail."""
    out: list[str] = []
    for entry in (p for p in sys.path if p in _EXISTING or p.startswith("/proc/self/fd/")):
        try:
            os.stat(entry)
        except PermissionError:
            out.append(entry)
        except OSError:
            pass  # absent for root too (e.g. pythonXY.zip): nothing lost
    return out


class _BadReturn(Exception):
    pass


def _text(obj: object) -> str:
    """``str(obj)``, or a placeholder when its ``__str__`` raises (never raises itself)."""
    try:
        return str(obj)
    except BaseException:
        return f"<unprintable {type(obj).__name__}>"


def _describe(exc: BaseException, *, where: bool = True) -> str:
    """``Type: message`` plus the innermost frame, enough to find the bug without a traceback."""
    text = f"{type(exc).__name__}: {_text(exc)}"
    if where:
        try:
            tb = traceback.extract_tb(exc.__traceback__)
        except BaseException:
            tb = traceback.StackSummary()
        if tb:
            last = tb[-1]
            text += f" ({os.path.basename(last.filename or '?')}:{last.lineno} in {last.name})"
    return text
