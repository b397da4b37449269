"""The audit ledger: append-only, hash-chained, SQLite."""

from guardpool.audit.events import KINDS, AuditEvent, StoredEvent, Summary, VerifyReport
from guardpool.audit.ledger import Ledger, LedgerError, LedgerWriteError

__all__ = [
    "KINDS",
    "AuditEvent",
    "Ledger",
    "LedgerError",
    "LedgerWriteError",
    "StoredEvent",
    "Summary",
    "VerifyReport",
]
