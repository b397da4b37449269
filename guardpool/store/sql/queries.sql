-- The PostgreSQL store's statements, one per "-- name:" block, loaded by
-- guardpool/store/postgres.py. Tables are unqualified: every connection's
-- search_path is the store's schema.

-- name: ensure
-- Counter rows exist before any transaction locks them (a row lock needs a
-- row); committed on its own so two hosts creating rows never deadlock.
INSERT INTO budget_counters (key, dimension)
SELECT k, d FROM unnest(%(keys)s::text[], %(dims)s::text[]) AS t (k, d)
ORDER BY k, d
ON CONFLICT DO NOTHING

-- name: prelude
-- The clock (the server's, so every host agrees on windows and deadlines,
-- unless the store was given one), the record of this reservation id, and the
-- live reservations that are overdue: their counters must be locked too before
-- anything is charged.
WITH n AS (
    SELECT COALESCE(%(now)s::bigint,
                    (extract(epoch FROM clock_timestamp()) * 1000)::bigint) AS now_ms
)
SELECT n.now_ms,
       (SELECT record FROM budget_reservations WHERE id = %(id)s) AS record,
       ARRAY(SELECT record FROM budget_reservations
             WHERE state = 'live' AND deadline_ms < n.now_ms
             ORDER BY deadline_ms LIMIT %(batch)s) AS overdue
FROM n

-- name: lock
-- Every counter the step may touch, locked in one order (key, dimension) by
-- every host, so two steps never wait on each other in a cycle. LockRows runs
-- above the sort: rows are locked in the order they are returned.
SELECT c.key, c.dimension, c.used, c.reserved
FROM budget_counters c
JOIN unnest(%(keys)s::text[], %(dims)s::text[]) AS t (k, d) ON c.key = t.k AND c.dimension = t.d
ORDER BY c.key, c.dimension
FOR UPDATE OF c

-- name: read
-- The same counters without locks (SERIALIZABLE mode: conflicts are found at commit).
SELECT c.key, c.dimension, c.used, c.reserved
FROM budget_counters c
JOIN unnest(%(keys)s::text[], %(dims)s::text[]) AS t (k, d) ON c.key = t.k AND c.dimension = t.d

-- name: records
-- Reservation records read again once the counters are locked: what another
-- host committed while this one waited is seen now.
SELECT id, record FROM budget_reservations WHERE id = ANY(%(ids)s::text[])

-- name: window_sum
SELECT COALESCE(SUM(amount), 0) FROM budget_charges
WHERE key = %(key)s AND dimension = %(dim)s AND ts_ms > %(horizon)s

-- name: write_counters
-- An upsert, not an UPDATE: a row deleted by hand is written back, not lost.
INSERT INTO budget_counters (key, dimension, used, reserved)
SELECT * FROM unnest(%(keys)s::text[], %(dims)s::text[], %(used)s::bigint[],
                     %(reserved)s::bigint[])
ON CONFLICT (key, dimension) DO UPDATE SET used = excluded.used, reserved = excluded.reserved

-- name: add_charges
INSERT INTO budget_charges (key, dimension, ts_ms, amount)
SELECT * FROM unnest(%(keys)s::text[], %(dims)s::text[], %(ts)s::bigint[], %(amounts)s::bigint[])

-- name: prune_charges
-- Charges that fell out of their window can never count again.
DELETE FROM budget_charges c
USING unnest(%(keys)s::text[], %(dims)s::text[], %(horizons)s::bigint[]) AS t (k, d, h)
WHERE c.key = t.k AND c.dimension = t.d AND c.ts_ms <= t.h

-- name: put_reservations
INSERT INTO budget_reservations (id, state, deadline_ms, record)
SELECT * FROM unnest(%(ids)s::text[], %(states)s::text[], %(deadlines)s::bigint[],
                     %(records)s::bytea[])
ON CONFLICT (id) DO UPDATE
SET state = excluded.state, deadline_ms = excluded.deadline_ms, record = excluded.record

-- name: prune_reservations
-- Finished reservations answer retries for a day past their deadline, then go.
DELETE FROM budget_reservations
WHERE state <> 'live'
  AND deadline_ms < COALESCE(%(now)s::bigint,
                             (extract(epoch FROM clock_timestamp()) * 1000)::bigint) - %(keep)s
