"""Config checks that know the machine: what would only fail later, refused at load.

    Config (decoded, bounded by the schema; [pool] numbers, the memory floor and
            max_rss_mb <= memory_mb are poolsettings.check_pool's, for every pool)
      ├─ pool.preload[i] imports              (the zygote would fail at start-up instead)
      ├─ store.path / audit.path name a file  (no "", no NUL: sqlite would raise later)
      └─ store.url parses for the backend     (the store would raise at first use)

Each failure is a ``PolicyError`` naming the key, raised while loading, so
``guardpool check``/``lint``/``serve`` exit 2 with one line instead of a worker
pool that dies at start-up or a traceback from a Redis client.

``advice(config)`` lists settings that are legal but probably wrong (a guard
timeout longer than the CPU budget that kills it first, more workers than
cores); ``guardpool lint`` shows them, each under its own rule code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

from guardpool.policy.config import Config
from guardpool.policy.errors import PolicyError
from guardpool.policy.guards import import_module

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_machine(config: Config, import_path: Sequence[str] = ()) -> None:
    """``import_path``: where the policy's own modules live (as for guard callables)."""
    pool = config.pool
    for i, module in enumerate(pool.preload):
        _import(module, f"pool.preload[{i}]", import_path)
    if config.store.backend == "redis" and config.store.url:
        _check_redis_url(config.store.url)


def check_paths(config: Config) -> None:
    """Called on the raw values, before the loader resolves them against the policy's
    directory (which would turn "" into that directory)."""
    for key, path in (("store.path", config.store.path), ("audit.path", config.audit.path)):
        _check_path(path, key)


def _check_path(path: str, key: str) -> None:
    if not path.strip():
        raise PolicyError("must name a file", key=key)
    if "\x00" in path:
        raise PolicyError("a path cannot contain a NUL character", key=key)
    if len(path.encode("utf-8", "surrogatepass")) > 4096:
        raise PolicyError("longer than 4096 bytes (PATH_MAX)", key=key)


def _import(module: str, key: str, import_path: Sequence[str]) -> None:
    try:
        import_module(module, import_path)
    except (Exception, SystemExit) as exc:  # a module that exits on import is a bad preload too
        raise PolicyError(
            f"cannot import {module!r}: {type(exc).__name__}: {exc}", key=key
        ) from None


def _check_redis_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError as exc:
        raise PolicyError(f"bad Redis URL: {exc}", key="store.url") from None
    if parts.scheme not in _REDIS_SCHEMES:
        raise PolicyError(
            f"bad Redis URL {url!r}: the scheme must be one of {', '.join(_REDIS_SCHEMES)}",
            key="store.url",
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise PolicyError(f"bad Redis URL {url!r}: no host", key="store.url")
    if port == 0:
        raise PolicyError(f"bad Redis URL {url!r}: port 0", key="store.url")
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not (db.isascii() and db.isdigit() and int(db) < 2**31):
        raise PolicyError(f"bad Redis URL {url!r}: the database must be a number", key="store.url")


class Advice(NamedTuple):
    """A setting that loads but is probably a mistake: ``guardpool lint`` shows it
    under ``code`` (a rule in ``analysis.rules``)."""

    code: str
    key: str
    message: str


def advice(config: Config, cores: int | None = None) -> list[Advice]:
    """Settings that load but are probably mistakes. ``cores`` defaults to this machine's."""
    out: list[Advice] = []
    pool = config.pool
    cores = cores or os.cpu_count() or 1
    if pool.workers is not None and pool.workers > 4 * cores:
        out.append(
            Advice(
                "GP205",
                "pool.workers",
                f"{pool.workers} workers on {cores} cores: guards are CPU jobs, extra workers "
                "only queue in the kernel and cost memory",
            )
        )
    default = config.guards.timeout_ms
    for i, g in enumerate(config.guard):
        if g.call is None:
            continue  # RE2 banks run in the host, outside the pool's job limits
        timeout = g.timeout_ms if g.timeout_ms is not None else default
        where = f"guard[{i}].timeout_ms" if g.timeout_ms is not None else "guards.timeout_ms"
        name = f" (guard {g.name!r})"
        if timeout > pool.job_cpu_ms:
            out.append(
                Advice(
                    "GP206",
                    where,
                    f"{timeout} ms{name} is above pool.job_cpu_ms ({pool.job_cpu_ms}): a guard "
                    "that computes for the whole time is killed by its CPU budget first",
                )
            )
        if timeout > pool.job_timeout_ms:
            # job_timeout_ms is the deadline of GuardPool.submit jobs only; a guard's own
            # timeout_ms is its deadline. `guardpool bench --write` sets job_timeout_ms to
            # the largest guard timeout, so people read it as a cap on guards: say it is not.
            out.append(
                Advice(
                    "GP207",
                    where,
                    f"{timeout} ms{name} is above pool.job_timeout_ms ({pool.job_timeout_ms}), "
                    "which does not cap guards: this guard may run its full timeout_ms",
                )
            )
    return out
