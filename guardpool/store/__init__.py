"""Budget counters: one protocol, several backends (memory, sqlite, redis, postgres)."""

from __future__ import annotations

from guardpool.policy.config import StoreConfig
from guardpool.store.base import BudgetStore, Clock


def open_store(config: StoreConfig, *, clock: Clock | None = None) -> BudgetStore:
    """The configured backend (policy ``[store]``).

    ``clock`` (milliseconds) replaces the backend's own: tests pass a manual
    clock and move it forward instead of sleeping.
    """
    if config.backend == "memory":
        from guardpool.store.memory import MemoryStore

        return MemoryStore(clock=clock) if clock else MemoryStore()
    if config.backend == "sqlite":
        from guardpool.store.sqlite import SqliteStore

        return SqliteStore(config.path, clock=clock) if clock else SqliteStore(config.path)
    if config.backend == "redis":
        from guardpool.store.redis import RedisStore

        return RedisStore(config, clock=clock)
    if config.backend == "postgres":
        from guardpool.store.postgres import PostgresStore

        return PostgresStore(config, clock=clock)
    raise ValueError(f"unknown store backend {config.backend!r}")
