"""Functions that ``guardpool fuzz`` and ``guardpool bench`` run *inside* pool workers.

Kept in a module of their own with nothing but the standard library, so that
submitting a probe to a worker does not import the analysis code (and its
memory) into the process being measured.
"""

from __future__ import annotations

import re
from typing import Any


def re_first_match(job: dict[str, Any]) -> int | None:
    """Index of the first pattern Python ``re`` finds in the text, or None.

    Runs under a pool deadline: ``re`` may backtrack for ever on the input.
    """
    text: str = job["text"]
    for i, pattern in enumerate(job["patterns"]):
        if re.search(pattern, text) is not None:
            return i
    return None


def memory(_: object) -> dict[str, int]:
    """This worker's address-space peak and resident peak in KiB, then reset the latter.

    ``VmPeak`` (the most address space ever mapped) is what ``memory_mb``
    (RLIMIT_AS) limits; it cannot be reset, which is why bench measures each
    guard in a fresh worker. ``VmHWM`` (peak resident set) is reset through
    ``/proc/self/clear_refs`` so that the next reading is the next job's own.
    """
    out: dict[str, int] = {}
    # Binary I/O: a sandboxed worker may not be able to import a codec lazily.
    with open("/proc/self/status", "rb") as status:
        for line in status:
            key, _, rest = line.partition(b":")
            if key in (b"VmPeak", b"VmSize", b"VmHWM", b"VmRSS"):
                out[key.decode("latin-1")] = int(rest.split()[0])
    try:
        with open("/proc/self/clear_refs", "wb") as refs:
            refs.write(b"5")
        out["hwm_reset"] = 1
    except OSError:  # not permitted (a worker that dropped privileges): a running peak
        out["hwm_reset"] = 0
    return out


def noop(_: object) -> None:
    """The smallest job."""
    return None


def breathe(_: object) -> int:
    """Allocate and touch 4 MiB: a worker that cannot do this cannot run a guard.

    A no-op alone is not a fair test of a memory limit: right after the fork
    the interpreter's arenas may have room, so a job can succeed by luck under
    a limit below what the worker already maps.
    """
    block = bytearray(4 << 20)
    block[::4096] = b"\x01" * len(block[::4096])
    return len(block)
