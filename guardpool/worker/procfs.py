"""/proc readers shared by the host (CPU time of a killed worker) and the zygote (orphans).

Kept off the kill path: the host SIGKILLs first and reads here afterwards, because
with hundreds of runnable processes (a fork bomb) a /proc walk can take seconds.
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


def cpu_ms(pid: int) -> float:
    """User + system CPU of a process (live or zombie) in ms; 0.0 once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000.0 / _CLK_TCK
