-- What a ledger's writing role may do, and no more: read the schema version,
-- read and append events. No UPDATE, DELETE or TRUNCATE, no DDL. Formatted by
-- guardpool/audit/pg_ledger.py:grant_writer with quoted identifiers.
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT ON {schema}.guardpool_schema TO {role};
GRANT SELECT, INSERT ON {schema}.audit_events TO {role};
REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.audit_events FROM {role};
