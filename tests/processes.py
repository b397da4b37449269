"""Process helpers shared by the pool and fixture tests: one definition of "gone"."""

from __future__ import annotations

import psutil


def running(pid: int) -> bool:
    """Alive and not a zombie: an exited process its parent has not reaped yet is dead.

    (``os.kill(pid, 0)`` succeeds on a zombie, which made a "gone" check wait for the
    zygote's reaping rather than for the death itself.)
    """
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pid: int) -> bool:
    """Exited (zombie or reaped)."""
    return not running(pid)
