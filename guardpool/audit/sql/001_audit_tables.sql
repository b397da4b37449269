-- The PostgreSQL audit ledger (guardpool/audit/pg_ledger.py); applied by
-- guardpool/pg/migrate.py with search_path set to the ledger's schema.

-- One hash chain per writer (a host, or a run): (chain, seq) orders a chain,
-- and appends to different chains never wait for each other.
CREATE TABLE audit_events (
    chain text NOT NULL,
    seq bigint NOT NULL,
    ts bigint NOT NULL,
    kind text NOT NULL,
    run_id text NOT NULL,
    payload text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL,
    PRIMARY KEY (chain, seq)
);
-- `audit show RUN_ID` across every chain.
CREATE INDEX audit_events_run ON audit_events (run_id, ts);

-- Append-only for everyone who is not the table's owner or a superuser: no
-- role but the owner may lift these, and verify catches what the owner does.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the guardpool audit ledger is append-only (% refused)', TG_OP;
END
$$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
REVOKE ALL ON audit_events FROM PUBLIC;
