"""Budget counters: one protocol, several backends (memory, sqlite, redis)."""
