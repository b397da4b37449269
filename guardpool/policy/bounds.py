"""Every numeric bound guardpool enforces, in one place (see docs/limits-and-inputs.md).

Why bounds at all: budget counters live in three stores. SQLite keeps 64-bit
integers and raises ``OverflowError`` past 2^63; Redis runs its scripts in Lua,
whose numbers are doubles that are exact only up to 2^53 and whose integer
replies wrap when converted. An unbounded ``tokens = 2**63`` from one hostile
client therefore either loses a settle or wraps a counter negative and makes a
budget unlimited. So every integer that can reach a counter is bounded here,
well inside 2^53, with room for sums:

- one amount (a usage, an estimate, a limit) is at most ``MAX_AMOUNT`` = 10^15;
- a counter never goes past ``COUNTER_CAP`` = 2^52 (~4.5 × 10^15): a store
  refuses (raises ``ValueError``) an amount above ``MAX_AMOUNT`` and saturates a
  counter at the cap. ``COUNTER_CAP + 2 × MAX_AMOUNT`` is still below 2^53, so
  the arithmetic that decides to saturate is itself exact in a double.

Since every limit is at most ``MAX_AMOUNT`` < ``COUNTER_CAP``, a saturated
counter is far over any limit: saturation never turns a refusal into a grant.
"""

from __future__ import annotations

from decimal import Decimal

# --------------------------------------------------------------- amounts

#: Largest integer amount of any dimension: tokens, calls, wall_ms, custom
#: dimensions, cost in micro-units; in Usage, limits, estimates and HTTP bodies.
#: 10^15 tokens is ~10^6 times the largest context window; 10^15 ms is 31,000
#: years; 10^15 micro-units is $1,000,000,000.
MAX_AMOUNT = 10**15

#: Counters saturate here (see the module docstring).
COUNTER_CAP = 2**52

# ----------------------------------------------------------------- money

#: Largest amount of money anywhere (a cost, a limit, a price per million
#: tokens): $10^9, so that it is ``MAX_AMOUNT`` micro-units.
MAX_MONEY = Decimal(10**9)
#: A money string is at most this long.
MAX_MONEY_CHARS = 128
#: Significant digits a money value may carry, and the smallest exponent. A
#: Decimal is checked on these before any arithmetic, because converting a
#: 10^6-digit Decimal to an integer takes seconds. 96 covers the exact decimal
#: expansion of any binary float between $10^-9 and $10^9 (at most 74 digits,
#: exponent >= -82, as ``Decimal(float)`` gives it) and every shortest float
#: repr (``"1.3649999999999999e-05"``): hosts that got a cost as a float are
#: not refused; amounts round up to whole micro-units anyway.
MAX_MONEY_DIGITS = 96
MIN_MONEY_EXPONENT = -96

# ------------------------------------------------------------- durations

#: The longest rolling window: 400 days covers a yearly budget plus slack;
#: windowed stores keep one entry per charge for the whole window.
MAX_WINDOW_MS = 400 * 86_400_000

# ------------------------------------------------------------------ pool

#: Workers are processes with two pipes each; 256 is far past what a guard pool
#: needs (guards are short CPU jobs: more workers than cores only queues in the
#: kernel instead of in guardpool) and keeps fork storms and fd use bounded.
MAX_WORKERS = 256
#: Per-job deadlines and CPU budgets: one hour. A guard that needs longer is
#: not a guard; host operations wait on it.
MAX_JOB_MS = 3_600_000
#: Per-worker address space: 1 TiB in MiB. Above that RLIMIT_AS means nothing.
MAX_MEMORY_MB = 1 << 20
#: The smallest memory_mb accepted. Measured: a worker forked from the zygote
#: (Python 3.11, guardpool, msgspec, re2 mapped) running a trivial guard needs
#: 22 MiB of address space (20 MiB: MemoryError while reading its first job).
#: Guard modules add their own imports, so the floor is twice that, rounded.
MIN_MEMORY_MB = 48
#: Processes and threads per worker cgroup: Linux's own ceiling (PID_MAX_LIMIT).
MAX_PIDS = 4_194_304
#: How long a worker looks for its next job, and a caller for its answer (µs): a look
#: is CPU spent while nothing runs, so it stays far below a job's cost; 1 ms is twenty
#: wake-ups.
MAX_IDLE_POLL_US = 1000
#: Recycle a worker after at most this many jobs.
MAX_JOBS_PER_WORKER = 10**9
#: Largest guard input: 256 MiB. The sidecar reads a body this large into
#: memory and every check hashes it; larger inputs are not guard inputs.
MAX_INPUT_BYTES = 256 << 20
#: RE2 program memory per bank: 1 GiB (re2 refuses or crashes on larger asks).
MAX_REGEX_MEM = 1 << 30

# ----------------------------------------------------------------- store

#: Store connect/operation timeouts: one minute. A budget check that waits
#: longer than that has failed; the default is 250 ms.
MAX_STORE_TIMEOUT_MS = 60_000
#: Reservation TTL: 7 days.
MAX_RESERVATION_TTL_MS = 7 * 86_400_000

# ------------------------------------------------------------------ text

#: Run ids, principals and decision ids in HTTP bodies and the API.
MAX_ID_CHARS = 256


def check_amount(value: object, what: str) -> int:
    """``value`` as an amount in [0, MAX_AMOUNT], or ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, not {value}")
    if value > MAX_AMOUNT:
        raise ValueError(f"{what} must be <= {MAX_AMOUNT:_} (10^15), not {_short(value)}")
    return value


def _short(value: int) -> str:
    """An integer for a message, without printing a million digits."""
    if value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return str(value)
