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
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

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
began = time.monotonic()
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
        if time.monotonic() - began + guess > job["budget"]:
            break
    last = (n, took)
"""

_EXP_SIZES = (*range(1, 33), 36, 40, 48, 56, 64, 80, 96, 128, 192, 256)
_POLY_SIZES = tuple(2**k for k in range(3, 18))
_MIN_MS = 3.0  # below this, timings are noise


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
    if killed and len(usable) >= 3:
        usable = usable[:-1]
    if len(usable) < 2:
        return ("unknown" if not points else "linear"), 0
    (n1, t1), (n2, t2) = usable[-2], usable[-1]
    if n2 <= n1 or t2 <= 0 or t1 <= 0:
        return "unknown", 0
    slope = math.log(t2 / t1) / math.log(n2 / n1)
    if len(usable) >= 3:
        (n0, t0) = usable[-3]
        if n1 > n0 and t0 > 0:
            slope = (slope + math.log(t1 / t0) / math.log(n1 / n0)) / 2
    if slope > 6.0:
        return "exponential", 0
    degree = max(1, math.floor(slope + 0.5))
    return ("linear", 1) if degree <= 1 else ("polynomial", degree)


def confirm(
    pattern: str | bytes,
    attack: Attack,
    *,
    flags: int = 0,
    call: str = "search",
    exponential: bool = False,
    deadline_s: float = 2.0,
    stop_s: float = 0.1,
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
    began = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        return Confirmation(False, "unknown", 0, (), False, attack, 0, f"cannot start: {exc}")
    killed = False
    try:
        out, err = proc.communicate(payload, timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        killed = True
    elapsed = time.monotonic() - began
    points: list[tuple[int, float]] = []
    for line in out.decode("ascii", "replace").splitlines():
        n, _, took = line.partition(" ")
        try:
            points.append((int(n), float(took)))
        except ValueError:
            continue
    if killed:
        done = {n for n, _ in points}
        pending = next((n for n in sizes if n not in done), None)
        if pending is not None:
            spent = sum(t for _, t in points)
            points.append((pending, max(elapsed - spent - 0.05, stop_s)))
    error = ""
    if proc.returncode not in (0, None) and not killed:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        error = lines[-1] if lines else f"child exited {proc.returncode}"
    growth, degree = classify(points, killed)
    # A clear growth class over points above the noise floor confirms it even when
    # the child stopped early to stay inside its budget.
    slow = killed or any(t >= stop_s / 4 for _, t in points)
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
    jobs: Sequence[Job], *, parallel: int = 2, deadline_s: float = 2.0, stop_s: float = 0.1
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
