"""Every check of the ``[pool]`` settings, in one place.

``PoolConfig`` (``config.py``) holds the defaults. ``check_pool`` is called by
``GuardPool`` for every pool, however it was built (keyword arguments, a policy
file, a hand-built ``Config``), and raises ``PolicyError`` naming ``pool.<key>``.
``worker_identity`` resolves ``user`` when the pool starts, because the account
database of the machine that runs the pool is the one that counts.
"""

from __future__ import annotations

import os
import pwd
import re

from guardpool.policy import bounds
from guardpool.policy.config import PoolConfig
from guardpool.policy.errors import PolicyError

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Integer settings, each > 0 except those in _ZERO_ALLOWED.
_POSITIVE = (
    "workers",
    "job_timeout_ms",
    "job_cpu_ms",
    "memory_mb",
    "max_rss_mb",
    "max_jobs_per_worker",
    "max_input_bytes",
    "pids_max",
    "idle_poll_us",
)
_ZERO_ALLOWED = frozenset({"idle_poll_us"})  # 0: the worker sleeps at once
# Upper bounds (bounds.py says why). The config schema refuses larger values
# while decoding; these hold for pools built from keyword arguments too.
_AT_MOST = {
    "workers": bounds.MAX_WORKERS,
    "job_timeout_ms": bounds.MAX_JOB_MS,
    "job_cpu_ms": bounds.MAX_JOB_MS,
    "memory_mb": bounds.MAX_MEMORY_MB,
    "max_rss_mb": bounds.MAX_MEMORY_MB,
    "max_jobs_per_worker": bounds.MAX_JOBS_PER_WORKER,
    "max_input_bytes": bounds.MAX_INPUT_BYTES,
    "pids_max": bounds.MAX_PIDS,
    "idle_poll_us": bounds.MAX_IDLE_POLL_US,
}
DEFAULT_IDLE_POLL_US = 50
DEFAULT_USER = "nobody"
NOBODY_ID = 65534  # nobody/nogroup on Linux when the account database has no entry


def idle_look_s(configured_us: int | None) -> float:
    """How long one side of a worker's channel looks for the other's message before it
    sleeps (``[pool] idle_poll_us``), in seconds: a worker for its next job, a lone
    waiting caller for its answer.

    On a VM, a process asleep on an idle vCPU is woken through the hypervisor (40-50 µs
    a message here); one that is still looking is not. Unset: 50 µs, unless this
    process may run on one CPU only (a container pinned to one, ``taskset``): the other
    side then runs on that same CPU, so looking only takes turns with it and each turn
    comes on top of the round trip (1 KB call p50 29 -> 37 µs there, against 78 -> 34
    µs with two CPUs; docs/pool.md, "Eighth pass"). A value given is taken as it is.
    """
    if configured_us is None:
        configured_us = 0 if usable_cpus() == 1 else DEFAULT_IDLE_POLL_US
    return configured_us / 1e6


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count):
    what the looks are decided on, here and in the caller's ``Dispatcher``."""
    return len(os.sched_getaffinity(0))


def check_memory_floor(pool: PoolConfig) -> None:
    """A policy's memory_mb must let a worker start (checked at load, not by GuardPool:
    ``guardpool bench`` builds pools below the floor on purpose to measure it)."""
    if pool.memory_mb < bounds.MIN_MEMORY_MB:
        raise PolicyError(
            f"must be at least {bounds.MIN_MEMORY_MB} (MiB of address space per worker): a "
            "guard worker needs about 22 MiB to start, more with its guard modules; "
            f"{pool.memory_mb} would kill every worker before its first job",
            key="pool.memory_mb",
        )


def check_pool(pool: PoolConfig, *, machine: str | None = None) -> None:
    """Raise ``PolicyError`` for the first bad setting. ``machine`` overrides the arch (tests)."""
    from guardpool.worker.sandbox import strict_unsupported_reason

    for field in _POSITIVE:
        value = getattr(pool, field)
        if value is None and field in ("workers", "max_rss_mb", "idle_poll_us"):
            continue
        zero_ok = field in _ZERO_ALLOWED
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero_ok else 1):
            raise PolicyError(
                f"must be {'>= 0' if zero_ok else '> 0'}, not {value!r}", key=f"pool.{field}"
            )
        if value > _AT_MOST[field]:
            raise PolicyError(
                f"must be at most {_AT_MOST[field]:_} (see docs/limits-and-inputs.md)",
                key=f"pool.{field}",
            )
    if pool.max_rss_mb is not None and pool.max_rss_mb > pool.memory_mb:
        raise PolicyError(
            f"max_rss_mb ({pool.max_rss_mb}) is above memory_mb ({pool.memory_mb}): a worker "
            "hits its memory limit before it could be recycled; set it at or below memory_mb",
            key="pool.max_rss_mb",
        )
    for i, module in enumerate(pool.preload):
        if not isinstance(module, str) or not _MODULE.fullmatch(module):
            raise PolicyError(f"{module!r} is not a module name", key=f"pool.preload[{i}]")
    if pool.hardening not in ("standard", "strict"):
        raise PolicyError(
            f"must be 'standard' or 'strict', not {pool.hardening!r}", key="pool.hardening"
        )
    if pool.hardening == "strict":
        reason = strict_unsupported_reason(machine)
        if reason:
            raise PolicyError(reason, key="pool.hardening")
    user = pool.user
    if user is None:
        return
    if isinstance(user, bool) or not isinstance(user, (str, int)):
        raise PolicyError(f"must be a user name or uid, not {user!r}", key="pool.user")
    if isinstance(user, str) and not user.strip():
        raise PolicyError("must be a user name or uid, not empty", key="pool.user")
    if user in ("root", 0, "0"):
        raise PolicyError(
            "workers never run guards as root; name an unprivileged user", key="pool.user"
        )
    if isinstance(user, int) and user < 0:
        raise PolicyError(f"must be a uid >= 1, not {user}", key="pool.user")


def worker_identity(pool: PoolConfig) -> tuple[int, int]:
    """(uid, gid) workers drop to, or (-1, -1) when the host is not root (nothing to drop)."""
    if os.geteuid() != 0:
        return -1, -1
    user = pool.user if pool.user is not None else DEFAULT_USER
    try:
        if isinstance(user, int) or user.isdigit():
            uid = int(user)
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = uid  # a bare numeric uid owning nothing: its own group number
        else:
            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if pool.user is None:
            return NOBODY_ID, NOBODY_ID
        raise PolicyError(f"no such user {user!r} on this machine", key="pool.user") from None
    if uid == 0 or gid == 0:
        raise PolicyError(
            f"{user!r} is root (uid {uid}, gid {gid}); workers never run guards as root",
            key="pool.user",
        )
    return uid, gid
