-- Budget counters in PostgreSQL (guardpool/store/postgres.py); applied by
-- guardpool/pg/migrate.py with search_path set to the store's schema.

-- Lifetime counters. A row is created once (before any transaction locks it)
-- and never deleted, so it can always be locked with SELECT ... FOR UPDATE.
CREATE TABLE budget_counters (
    key text NOT NULL,
    dimension text NOT NULL,
    used bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key, dimension)
);

-- Charges of windowed counters: used = the sum of those inside the window.
CREATE TABLE budget_charges (
    key text NOT NULL,
    dimension text NOT NULL,
    ts_ms bigint NOT NULL,
    amount bigint NOT NULL
);
CREATE INDEX budget_charges_window ON budget_charges (key, dimension, ts_ms);

-- One row per reservation id: its state and its whole record (msgpack), which
-- answers a retried request with the first answer.
CREATE TABLE budget_reservations (
    id text PRIMARY KEY,
    state text NOT NULL,
    deadline_ms bigint NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX budget_reservations_live ON budget_reservations (deadline_ms)
    WHERE state = 'live';
