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

import importlib
import logging
import os
import resource
import signal
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from guardpool.policy import inputs, poolsettings
from guardpool.policy.verdict import normalize
from guardpool.worker import context, protocol, startup
from guardpool.worker.channel import Channel, ForwardingHandler

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard


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
# ``[pool] idle_poll_us`` sets it (Worker, poolsettings.idle_look_s); 0: sleep at once.
IDLE_SPIN_S = poolsettings.DEFAULT_IDLE_POLL_US / 1e6  # until Worker sets it


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


class Worker:
    def __init__(
        self,
        jobs: socket.socket,
        answers: socket.socket,
        guards: Mapping[str, CompiledGuard],
        regex_max_mem: int,
        log_level: int,
        idle_poll_us: int | None,
    ) -> None:
        global IDLE_SPIN_S
        IDLE_SPIN_S = poolsettings.idle_look_s(idle_poll_us)
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
                protocol.Ready(
                    pid=self.pid, cpu_total_ms=self.cpu_total, unreadable=startup.unreadable()
                )
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
