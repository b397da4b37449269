"""The audit ledger: append-only, hash-chained, SQLite."""
