"""Budget counters: one protocol, several backends (memory, sqlite, redis)."""

from __future__ import annotations

from guardpool.policy.config import StoreConfig
from guardpool.store.base import BudgetStore


def open_store(config: StoreConfig) -> BudgetStore:
    """The configured backend (policy ``[store]``)."""
    if config.backend == "memory":
        from guardpool.store.memory import MemoryStore

        return MemoryStore()
    if config.backend == "sqlite":
        from guardpool.store.sqlite import SqliteStore

        return SqliteStore(config.path)
    if config.backend == "redis":
        from guardpool.store.redis import RedisStore

        return RedisStore(config)
    raise ValueError(f"unknown store backend {config.backend!r}")
