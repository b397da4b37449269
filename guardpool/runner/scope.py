"""Who and what one check or settle is about: stamps its audit events and hooks."""

from __future__ import annotations

from typing import Any

import msgspec

from guardpool.audit.events import AuditEvent


class Scope(msgspec.Struct, frozen=True):
    decision_id: str
    run_id: str
    principal: str
    labels: tuple[str, ...]

    def event(self, kind: str, **fields: Any) -> AuditEvent:
        """An audit event of this decision."""
        return AuditEvent(
            kind=kind,
            run_id=self.run_id,
            principal=self.principal,
            labels=self.labels,
            decision_id=self.decision_id,
            **fields,
        )
