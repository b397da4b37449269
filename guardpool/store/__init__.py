"""Budget counters: one protocol, several backends (memory, sqlite, redis)."""

from __future__ import annotations

from typing import Protocol

from guardpool.store.base import BudgetStore


class StoreSettings(Protocol):
    backend: str
    path: str
    url: str | None
    key_prefix: str
    connect_timeout_ms: int
    op_timeout_ms: int
    reservation_ttl_ms: int


def open_store(config: StoreSettings) -> BudgetStore:
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
