"""Which ledger a policy's ``[audit]`` section asks for, and what the enforcer needs of it.

``sqlite`` (default): ``ledger.Ledger``, one chain in one file per host.
``postgres``: ``pg_ledger.PgLedger``, one store for a fleet, one chain per host or run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from guardpool.audit.events import AuditEvent, Summary
from guardpool.policy.config import AuditConfig


class AuditLedger(Protocol):
    """What the enforcer (audit sink) and the sidecar use of a ledger."""

    def input_fields(self, input: object) -> dict[str, Any]: ...

    def append(self, events: Sequence[AuditEvent]) -> None: ...

    def summary(self, run_id: str | None = None) -> Summary: ...

    def close(self) -> None: ...


def open_ledger(cfg: AuditConfig) -> AuditLedger:
    """The configured ledger, created or migrated if needed (``LedgerWriteError`` if not)."""
    if cfg.backend == "postgres":
        from guardpool.audit.pg_ledger import PgLedger

        return PgLedger(
            cfg.url or "",
            schema=cfg.schema,
            chain=cfg.chain,
            capture_input=cfg.capture_input,
            op_timeout_ms=cfg.op_timeout_ms,
        )
    from guardpool.audit.ledger import Ledger

    return Ledger(cfg.path, capture_input=cfg.capture_input)
