"""/proc readers shared by the host (CPU time of a killed worker) and the zygote (orphans).

Kept off the kill path: the host SIGKILLs first and reads here afterwards, because
with hundreds of runnable processes (a fork bomb) a /proc walk can take seconds.
The host reads a killed worker's CPU time through ``/proc/PID/stat`` opened when the
worker started (``open_stat``): opening that path just after a SIGKILL, while the
process tears itself down, took 0.5 ms (up to 5 ms) on the verdict's path; a
``pread`` of the open file takes ~0.05 ms.
"""

from __future__ import annotations

import os

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` from the kernel's per-thread ``children`` lists."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(k) for k in f.read().split())
        except OSError:
            continue  # thread gone, or a kernel without CONFIG_PROC_CHILDREN
    return found


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children of children ...), one /proc read per thread."""
    found: list[int] = []
    stack = [pid]
    while stack:
        kids = children(stack.pop())
        found.extend(kids)
        stack.extend(kids)
    return found


def open_stat(pid: int) -> int:
    """A descriptor on ``/proc/PID/stat`` for ``stat_cpu_ms`` later; -1 if it is gone."""
    try:
        return os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def stat_cpu_ms(fd: int) -> float:
    """User + system CPU in ms of the process whose stat ``fd`` holds (live or zombie);
    0.0 once it is reaped (the read fails) or without a descriptor."""
    if fd < 0:
        return 0.0
    try:
        fields = os.pread(fd, 1024, 0).rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000.0 / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0
