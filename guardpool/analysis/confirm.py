"""Confirming a ReDoS by timing CPython's ``re`` on the attack, in a child under a deadline.

Data flow: (pattern, flags, call style, ``Attack``) -> pickled onto the stdin
of a fresh ``python -I`` child (never the command line: a pattern may hold NUL
bytes, lone surrogates or megabytes of literal text) -> the child compiles the
pattern, builds ``prefix + pump^n + suffix`` for growing ``n`` and times the
call exactly as the guard makes it (``search``, ``match``, ``fullmatch``,
``findall``, ``sub``, ``split``…) in CPU time, printing one line per size ->
the parent reads what arrived before the deadline (a child still busy at the
deadline is killed; its unfinished size counts as "at least that slow") ->
``classify`` fits the growth: exponential, or polynomial of degree k.

Only exponential growth or degree >= 3 counts as confirmed: a quadratic
backtrack is real but is what the per-guard deadline is there for.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import psutil

from guardpool.analysis.ambiguity import Attack

Growth = Literal["exponential", "polynomial", "linear", "unknown"]
CALLS = ("search", "match", "fullmatch", "findall", "finditer", "sub", "subn", "split")

_CHILD = r"""
import pickle, re, sys, time
job = pickle.load(sys.stdin.buffer)
rx = re.compile(job["pattern"], job["flags"])
call = job["call"]
empty = b"" if isinstance(job["pattern"], bytes) else ""
run = {
    "finditer": lambda t: list(rx.finditer(t)),
    "sub": lambda t: rx.sub(empty, t),
    "subn": lambda t: rx.subn(empty, t),
}.get(call) or getattr(rx, call)
prefix, parts, suffix = job["attack"]
began = time.process_time()
last = None
for n in job["sizes"]:
    text = prefix + "".join(p * n + c for p, c in parts) + suffix
    if isinstance(job["pattern"], bytes):
        text = text.encode("latin-1")
    t = time.process_time()
    run(text)
    took = time.process_time() - t
    sys.stdout.write(f"{n} {took!r}\n")
    sys.stdout.flush()
    if took >= job["stop"]:
        break
    # Stop before a size that would overrun the budget (growth so far, extrapolated).
    if last and last[1] > 0.0005 and took > 0.0005:
        guess = took * (took / last[1]) ** 1.5  # pessimistic: growth may be speeding up
        if time.process_time() - began + guess > job["budget"]:
            break
    last = (n, took)
"""

_EXP_SIZES = (*range(1, 33), 36, 40, 48, 56, 64, 80, 96, 128, 192, 256)
# Pump counts grow by ~1.4x so that a fast-growing attack still yields several
# points before it hits the budget.
_POLY_SIZES = tuple(sorted({int(8 * 2 ** (k / 2)) for k in range(0, 31)}))
_MIN_MS = 1.0  # below this, timings are noise


_WALL_FACTOR = 10  # a child starved of CPU on a busy machine still ends
_SLOW_S = 0.05  # a measured point at least this slow, with the right growth, confirms
_STARTUP_CPU_S = 0.15  # generous: interpreter start, imports, compiling the pattern


def _run(proc: subprocess.Popen[bytes], payload: bytes, deadline_s: float) -> float | None:
    """Feed the child and wait; kill it once it has used ``deadline_s`` of CPU.

    The budget is the child's CPU time, not the wall clock, so that a busy
    machine (a child waiting for a core) cannot pass for a slow regex; the wall
    clock still stops it at ``_WALL_FACTOR`` times the budget. Returns the CPU seconds used
    when it had to be killed, None when it finished.
    """
    try:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # it died at once: its stderr says why
    began = time.monotonic()
    while proc.poll() is None:
        cpu = _cpu_seconds(proc.pid)
        if cpu >= deadline_s or time.monotonic() - began >= _WALL_FACTOR * deadline_s:
            proc.kill()
            proc.wait()
            return cpu
        time.sleep(0.02)
    return None


def _cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return 0.0
    return float(times.user + times.system)


@dataclass(frozen=True)
class Confirmation:
    confirmed: bool
    growth: Growth
    degree: int  # polynomial degree, 0 otherwise
    points: tuple[tuple[int, float], ...]  # (n, seconds of CPU); the last may be a lower bound
    killed: bool  # the child hit the deadline
    attack: Attack
    length: int  # length of the longest attack string timed
    error: str = ""

    @property
    def worst_ms(self) -> float:
        return max((t for _, t in self.points), default=0.0) * 1000

    def describe(self) -> str:
        if self.error:
            return f"not timed: {self.error}"
        if self.growth == "exponential":
            what = "exponential"
        elif self.growth == "polynomial":
            what = f"polynomial, degree {self.degree}"
        else:
            what = self.growth
        shown = ", ".join(f"n={n}: {t * 1000:.0f} ms" for n, t in self.points[-3:])
        cut = " (killed at the deadline)" if self.killed else ""
        return f"{what}: {shown}{cut}"


def classify(points: Sequence[tuple[int, float]], killed: bool = False) -> tuple[Growth, int]:
    """Growth class from (n, seconds) measurements at increasing n.

    When the child was killed, the last point is only a lower bound: it is used
    only if fewer than two completed points are above the noise floor.
    """
    usable = [(n, t) for n, t in points if t * 1000 >= _MIN_MS and n > 0]
    bound = 0.0  # growth the killed point proves, at least
    if killed and len(usable) >= 2:
        (nb, tb), (nk, tk) = usable[-2], usable[-1]
        if nk > nb and tb > 0:
            bound = math.log(tk / tb) / math.log(nk / nb)
        if len(usable) >= 3:
            usable = usable[:-1]
    if len(usable) < 2:
        return ("unknown" if not points else "linear"), 0
    # Least squares in log-log space over the last (up to) three points: the
    # largest sizes, where the leading term dominates.
    tail = usable[-3:]
    xs = [math.log(n) for n, _ in tail]
    ys = [math.log(t) for _, t in tail]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 0:
        return "unknown", 0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    slope = max(slope, bound)
    if slope > 6.0:
        return "exponential", 0
    # 2.55 and up is cubic: lower-order terms pull measured cubics below 3 at
    # these sizes, and quadratics measure 2.0-2.4.
    degree = max(1, math.floor(slope + 0.45))
    return ("linear", 1) if degree <= 1 else ("polynomial", degree)


def confirm(
    pattern: str | bytes,
    attack: Attack,
    *,
    flags: int = 0,
    call: str = "search",
    exponential: bool = False,
    deadline_s: float = 3.0,
    stop_s: float = 0.3,
) -> Confirmation:
    """Time ``re.<call>(pattern, attack.text(n))`` for growing ``n`` in a child process."""
    if call not in CALLS:
        call = "search"
    sizes = _EXP_SIZES if exponential else _POLY_SIZES
    job = {
        "pattern": pattern,
        "flags": flags,
        "call": call,
        "attack": (attack.prefix, attack.parts, attack.suffix),
        "sizes": sizes,
        "stop": stop_s,
        "budget": deadline_s * 0.8,
    }
    payload = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _CHILD],
                stdin=subprocess.PIPE,
                stdout=out_file,
                stderr=err_file,
            )
        except OSError as exc:
            return Confirmation(False, "unknown", 0, (), False, attack, 0, f"cannot start: {exc}")
        cpu_at_kill = _run(proc, payload, deadline_s)
        killed = cpu_at_kill is not None
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    points: list[tuple[int, float]] = []
    for line in out.decode("ascii", "replace").splitlines():
        n, _, took = line.partition(" ")
        try:
            points.append((int(n), float(took)))
        except ValueError:
            continue
    proven = False
    if cpu_at_kill is not None:
        # The size in progress took at least the child's CPU time not accounted
        # for by the finished sizes (minus a margin for its start-up).
        done = {n for n, _ in points}
        pending = next((n for n in sizes if n not in done), None)
        spent = sum(t for _, t in points)
        at_least = cpu_at_kill - spent - _STARTUP_CPU_S
        if pending is not None and at_least > stop_s:
            points.append((pending, at_least))
            proven = True
    error = ""
    if proc.returncode not in (0, None) and not killed:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        error = lines[-1] if lines else f"child exited {proc.returncode}"
    growth, degree = classify(points, proven)
    # A clear growth class over points above the noise floor confirms it even when
    # the child stopped early to stay inside its budget.
    slow = proven or any(t >= _SLOW_S for _, t in points)
    confirmed = slow and (growth == "exponential" or (growth == "polynomial" and degree >= 3))
    longest = max((n for n, _ in points), default=0)
    return Confirmation(
        confirmed,
        growth,
        degree,
        tuple(points),
        killed,
        attack,
        len(attack.text(longest)) if longest else 0,
        error,
    )


@dataclass(frozen=True)
class Job:
    pattern: str | bytes
    attack: Attack
    flags: int = 0
    call: str = "search"
    exponential: bool = False


def confirm_many(
    jobs: Sequence[Job], *, parallel: int = 2, deadline_s: float = 3.0, stop_s: float = 0.3
) -> list[Confirmation]:
    """``confirm`` for each job, ``parallel`` children at a time, in order."""

    def one(job: Job) -> Confirmation:
        return confirm(
            job.pattern,
            job.attack,
            flags=job.flags,
            call=job.call,
            exponential=job.exponential,
            deadline_s=deadline_s,
            stop_s=stop_s,
        )

    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, jobs))
