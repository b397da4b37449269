"""``GuardPool``: sandboxed, killable worker processes for guard code.

This module is the public face; the machinery lives beside it:

* ``manager.py``     the manager thread: epoll loop, deadlines, notices, start/stop
* ``dispatch.py``    the hot path any thread runs: place a job, finish its answer, kill
* ``caller_read.py`` the waiting caller's part of it: read its own job's answer
* ``futures.py``     ``JobFuture``: ``result()`` reads the answer in the waiting thread
* ``lifecycle.py``   each worker's socket, answers, birth and end (manager thread)
* ``healing.py``     the zygote: start, loss, restart; broken; teardown
* ``scheduler.py``   task records, queue, deadline heap, resolution
* ``worker_link.py`` the host's end of one worker (framing, buffers, kill)
* ``zygote_link.py`` the host's end of the zygote (start, spawn, restart backoff)
* ``results.py``     ``JobResult``, ``PoolStats``, ``PoolState``, ``PoolBroken``
* ``policy/poolsettings.py``  every check of the ``[pool]`` settings

Deadlines are absolute from ``submit``. A job still queued at its deadline resolves
without running; a running one has its worker's process group (and cgroup) SIGKILLed
at once, which works whatever the worker is doing (even a C call that ignores
signals). The CPU budget is the kernel's: ``ITIMER_PROF`` in the worker. See
``docs/pool.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from guardpool.policy.config import PoolConfig
from guardpool.policy.poolsettings import check_pool, worker_identity
from guardpool.runner.manager import Manager
from guardpool.runner.results import JobResult, PoolBroken, PoolState, PoolStats
from guardpool.worker import protocol

if TYPE_CHECKING:
    from guardpool.policy.config import Config, GuardDefaults, GuardSpec
    from guardpool.policy.loader import Policy

Hardening = str  # "standard" | "strict" (checked by check_pool)


class GuardPool:
    """A pool of sandboxed worker processes running guard code under hard limits.

    Safe to use from many threads at once. Keyword arguments are the ``[pool]``
    settings (``PoolConfig`` holds their defaults); a bad one raises ``PolicyError``
    naming ``pool.<key>``. See ``docs/pool.md``.
    """

    def __init__(
        self,
        workers: int | None = None,
        job_timeout_ms: int | None = None,
        job_cpu_ms: int | None = None,
        memory_mb: int | None = None,
        max_rss_mb: int | None = None,
        max_jobs_per_worker: int | None = None,
        max_input_bytes: int | None = None,
        preload: Sequence[str] = (),
        hardening: Hardening | None = None,
        guard_specs: Iterable[GuardSpec] = (),
        guard_defaults: GuardDefaults | None = None,
        *,
        user: str | int | None = None,
        pids_max: int | None = None,
        idle_poll_us: int | None = None,
        config: PoolConfig | None = None,
        import_path: Sequence[str] = (),
    ) -> None:
        given = {
            "workers": workers,
            "job_timeout_ms": job_timeout_ms,
            "job_cpu_ms": job_cpu_ms,
            "memory_mb": memory_mb,
            "max_rss_mb": max_rss_mb,
            "max_jobs_per_worker": max_jobs_per_worker,
            "max_input_bytes": max_input_bytes,
            "hardening": hardening,
            "user": user,
            "pids_max": pids_max,
            "idle_poll_us": idle_poll_us,
        }
        base = config if config is not None else PoolConfig()
        cfg = msgspec.structs.replace(
            base,
            preload=list(preload) or list(base.preload),
            **{k: v for k, v in given.items() if v is not None},
        )
        check_pool(cfg)
        self._config = cfg
        self._workers = cfg.workers if cfg.workers is not None else (os.cpu_count() or 1)
        self._max_rss_mb = cfg.max_rss_mb if cfg.max_rss_mb is not None else cfg.memory_mb * 3 // 4
        specs = list(guard_specs)
        default_timeout = guard_defaults.timeout_ms if guard_defaults is not None else 1000
        self._guard_timeouts = {
            s.name: s.timeout_ms if s.timeout_ms is not None else default_timeout for s in specs
        }
        self._guards = msgspec.msgpack.encode(specs) if specs else b""
        self._guard_defaults = (
            msgspec.msgpack.encode(guard_defaults) if guard_defaults is not None else b""
        )
        # Put before sys.path in the zygote: guard modules beside a policy file.
        self._import_path = tuple(import_path)
        self._lock = threading.Lock()
        self._closed = False
        self._manager: Manager | None = None
        self._broken: PoolBroken | None = None  # start-up failed for good
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @classmethod
    def from_config(
        cls, source: str | Path | dict[str, Any] | Config | PoolConfig | Policy
    ) -> GuardPool:
        """A pool from a policy file/dict, a ``Config``, a loaded ``Policy`` or a ``PoolConfig``.

        With anything but a bare ``PoolConfig`` the pool also gets the guard specs and
        guard defaults, so ``submit_guard`` works.
        """
        from guardpool.policy.config import Config
        from guardpool.policy.loader import Policy, load_policy

        if isinstance(source, PoolConfig):
            return cls(config=source)
        if isinstance(source, Config):
            return cls(guard_specs=source.guard, guard_defaults=source.guards, config=source.pool)
        policy = source if isinstance(source, Policy) else load_policy(source)
        return cls(
            guard_specs=[g.spec for g in policy.guards.values()],
            guard_defaults=policy.config.guards,
            config=policy.config.pool,
            import_path=policy.import_path,
        )

    @property
    def config(self) -> PoolConfig:
        """The checked ``[pool]`` settings this pool runs with."""
        return self._config

    @property
    def state(self) -> PoolState:
        manager = self._manager
        if manager is not None:
            return manager.state
        if self._broken is not None:
            return "broken"
        return "stopped" if self._closed else "starting"

    def start(self) -> GuardPool:
        """Start the zygote and the workers; returns once they are ready. Idempotent.

        Raises ``PoolBroken`` when the pool cannot work (a preload that fails to import,
        guards that do not compile, a ``user`` that does not exist, workers that die at
        start-up); ``PolicyError`` for a bad ``user``.
        """
        self._running()
        return self

    def _setup(self) -> protocol.Setup:
        cwd = os.getcwd()
        uid, gid = worker_identity(self._config)
        return protocol.Setup(
            sys_path=[*self._import_path, *(p or cwd for p in sys.path)],
            preload=list(self._config.preload),
            guards=self._guards,
            guard_defaults=self._guard_defaults,
            memory_mb=self._config.memory_mb,
            hardening=self._config.hardening,
            log_level=logging.getLogger().getEffectiveLevel(),
            uid=uid,
            gid=gid,
            pids_max=self._config.pids_max,
            idle_poll_us=self._config.idle_poll_us,
        )

    def _running(self) -> Manager:
        manager = self._manager
        if manager is not None:
            if manager.broken is not None:
                raise manager.broken
            return manager
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._closed:
                raise RuntimeError("GuardPool: the pool is shut down")
            if self._manager is None:
                manager = Manager(self._config, self._workers, self._max_rss_mb, self._setup())
                self._finalizer = weakref.finalize(self, manager.stop)
                try:
                    manager.start()
                except PoolBroken as exc:
                    self._broken = exc
                    manager.stop()
                    raise
                except BaseException:
                    manager.stop()
                    raise
                self._manager = manager
            return self._manager

    def __enter__(self) -> GuardPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def submit(
        self,
        target: str,
        input: Any,
        timeout_ms: int | None = None,
        cpu_ms: int | None = None,
    ) -> Future[JobResult]:
        """Run ``fn(input)`` for ``target = "module:function"`` in a worker."""
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"GuardPool.submit: target {target!r} is not 'module:function'")
        cpu = cpu_ms if cpu_ms is not None else self._config.job_cpu_ms

        def make(task_id: int, value: Any, cpu: int, deadline: float) -> protocol.CallJob:
            return protocol.CallJob(task_id, target, value, cpu, deadline)

        timeout = timeout_ms if timeout_ms is not None else self._config.job_timeout_ms
        return self._running().submit(make, input, timeout, cpu, self, False)

    async def asubmit(
        self,
        target: str,
        input: Any,
        timeout_ms: int | None = None,
        cpu_ms: int | None = None,
    ) -> JobResult:
        return await asyncio.wrap_future(self.submit(target, input, timeout_ms, cpu_ms))

    def submit_guard(
        self,
        name: str,
        input: Any,
        *,
        labels: Sequence[str] = (),
        run_id: str = "",
        principal: str = "",
        phase: str = "before",
        timeout_ms: int | None = None,
    ) -> Future[JobResult]:
        """Run the compiled guard ``name``; an ``ok`` result's value is a ``Verdict``."""
        if name not in self._guard_timeouts:
            raise KeyError(f"GuardPool.submit_guard: unknown guard {name!r}")
        timeout = timeout_ms if timeout_ms is not None else self._guard_timeouts[name]
        labels_t = tuple(labels)

        def make(task_id: int, value: Any, cpu: int, deadline: float) -> protocol.GuardJob:
            return protocol.GuardJob(
                task_id, name, value, labels_t, run_id, principal, phase, deadline, cpu
            )

        return self._running().submit(make, input, timeout, self._config.job_cpu_ms, self, True)

    def stats(self) -> PoolStats:
        manager = self._manager
        if manager is None:
            return PoolStats(
                workers=0,
                busy=0,
                queued=0,
                spawned=0,
                killed=0,
                crashed=0,
                recycled=0,
                completed=0,
                timeouts=0,
                refused=0,
                state=self.state,
            )
        return manager.stats()

    def shutdown(self) -> None:
        """Fail outstanding jobs, kill every worker and the zygote, close every fd."""
        with self._lock:
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()  # runs manager.stop once, then detaches
                self._finalizer = None
            self._manager = None


__all__ = ["GuardPool", "JobResult", "PoolBroken", "PoolState", "PoolStats"]
