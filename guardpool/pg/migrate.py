"""Tables created and upgraded by guardpool itself, versioned per component.

Migrations are ``NNN_name.sql`` files in a package directory (``store/sql``,
``audit/sql``), applied in order. ``guardpool_schema`` in the target schema
records each component's version. A host that finds the schema current only
reads that row, so a role without DDL rights (the ledger's writing role) can
start; one that finds it behind takes a transaction-scoped advisory lock, so
hosts starting together apply each migration once. A schema newer than this
guardpool is refused rather than written with an older layout.
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg
import psycopg.errors
from psycopg import sql

from guardpool.pg.pool import DeadlineConnection

_FILE = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


class SchemaError(Exception):
    """The schema cannot be used by this version of guardpool."""


def migrations(package: str) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration in ``package``'s ``sql`` directory."""
    found = []
    for entry in resources.files(package).joinpath("sql").iterdir():
        m = _FILE.fullmatch(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"{package}: migrations must be numbered 001, 002, ...: {versions}")
    return found


def current_version(conn: DeadlineConnection, schema: str, component: str) -> int | None:
    """The recorded version, or None when the version table does not exist yet."""
    try:
        with conn.transaction():
            row = conn.execute(
                sql.SQL("SELECT version FROM {}.guardpool_schema WHERE component = %s").format(
                    sql.Identifier(schema)
                ),
                (component,),
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return int(row[0]) if row else 0


def migrate(conn: DeadlineConnection, schema: str, component: str, package: str) -> int:
    """Bring ``component`` up to the newest migration in ``package``; its version after."""
    steps = migrations(package)
    latest = len(steps)
    found = current_version(conn, schema, component)
    if found == latest:
        return latest
    if found is not None and found > latest:
        raise SchemaError(_newer(schema, component, found, latest))
    with conn.transaction():
        ident = sql.Identifier(schema)
        # hashtext is stable across servers: every host takes the same lock.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('guardpool-migrate:' || %s))", (schema,)
        )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS guardpool_schema (
                component text PRIMARY KEY,
                version integer NOT NULL,
                migrated_at timestamptz NOT NULL DEFAULT now())"""
        )
        row = conn.execute(
            "SELECT version FROM guardpool_schema WHERE component = %s FOR UPDATE", (component,)
        ).fetchone()
        version = int(row[0]) if row else 0
        if version > latest:
            raise SchemaError(_newer(schema, component, version, latest))
        for number, _name, text in steps[version:]:
            conn.execute(text.encode())  # a file may hold several statements
            version = number
        conn.execute(
            "INSERT INTO guardpool_schema (component, version) VALUES (%s, %s) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version, "
            "migrated_at = now()",
            (component, version),
        )
    return version


def _newer(schema: str, component: str, found: int, latest: int) -> str:
    return (
        f"schema {schema!r} holds {component} version {found}, newer than this guardpool "
        f"knows ({latest}): upgrade guardpool"
    )
