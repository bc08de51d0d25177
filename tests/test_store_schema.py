"""The schema is written once per dialect (store/schema/<dialect>/NNN.sql): both dialects must end
with the same tables, columns and indexes, so that one cannot drift from the other unseen."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from support import pg_schema_url, require_postgres

from webhook_app.store import SCHEMA_VERSION
from webhook_app.store.postgres import PostgresStore
from webhook_app.store.schema import DIALECTS, migrations, statements
from webhook_app.store.sqlite import SQLiteStore

# PostgreSQL alone keeps the rate-limit window every worker shares; SQLite's is per process
# (one host, one worker), so it has no table for it.
POSTGRES_ONLY = {"rate_limit_slots"}


def sqlite_shape(path: str) -> tuple[dict[str, list[str]], dict[str, tuple[str, tuple[str, ...]]]]:
    conn = sqlite3.connect(path)
    try:
        tables = {
            name: [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]  # names from sqlite_master
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        indexes = {}
        for name, table in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'"
        ):
            cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
            indexes[name] = (table, cols)
        return tables, indexes
    finally:
        conn.close()


def postgres_shape(url: str) -> tuple[dict[str, list[str]], dict[str, tuple[str, tuple[str, ...]]]]:
    with psycopg.connect(url) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        tables: dict[str, list[str]] = {}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s"
            " ORDER BY table_name, ordinal_position",
            (schema,),
        ):
            tables.setdefault(table, []).append(column)
        indexes = {}
        for name, table, cols in conn.execute(
            "SELECT i.relname, t.relname, array_agg(a.attname ORDER BY k.n)"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
            " JOIN pg_namespace s ON s.oid = t.relnamespace"
            " CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)"
            " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
            " WHERE s.nspname = %s AND NOT x.indisprimary AND NOT x.indisunique"
            " GROUP BY i.relname, t.relname",
            (schema,),
        ):
            indexes[name] = (table, tuple(cols))
        return tables, indexes


def test_every_dialect_has_every_version():
    assert {d: len(migrations(d)) for d in DIALECTS} == {d: SCHEMA_VERSION for d in DIALECTS}


def test_statements_split_on_line_ending_semicolons_and_drop_comments():
    assert statements("-- a comment\nCREATE TABLE a (x INT);\n\n-- b\nCREATE INDEX b ON a(x);\n") == [
        "CREATE TABLE a (x INT)",
        "CREATE INDEX b ON a(x)",
    ]


def test_both_dialects_end_with_the_same_tables_columns_and_indexes(tmp_path):
    require_postgres()
    path = str(tmp_path / "shape.db")
    SQLiteStore(path).migrate()
    lite_tables, lite_indexes = sqlite_shape(path)
    with pg_schema_url() as url:
        store = PostgresStore(url)
        try:
            store.migrate()
        finally:
            store.close()
        pg_tables, pg_indexes = postgres_shape(url)
    pg_tables = {t: c for t, c in pg_tables.items() if t not in POSTGRES_ONLY}
    pg_indexes = {i: v for i, v in pg_indexes.items() if v[0] not in POSTGRES_ONLY}
    assert lite_tables == pg_tables
    assert lite_indexes == pg_indexes
    assert lite_indexes["jobs_pending"] == ("jobs", ("next_attempt_at", "id"))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_no_statement_is_empty(dialect):
    for n, version in enumerate(migrations(dialect), 1):
        assert all(s.strip() for s in version), (dialect, n)


def test_the_state_enums_name_exactly_the_values_the_schemas_check():
    """states.py's enums are what the code compares and writes; the CHECK constraints are what
    the database accepts: a state added to one and not the other fails here, not in production."""
    import re
    from pathlib import Path

    from webhook_app.states import ActionState, CardState, JobState

    wanted = {"jobs": set(JobState), "order_actions": set(ActionState), "card_claims": set(CardState)}
    root = Path(__file__).resolve().parents[1] / "webhook_app" / "store" / "schema"
    for dialect in DIALECTS:
        found: dict[str, set[str]] = {}
        for path in sorted((root / dialect).glob("*.sql")):  # the latest definition of a table wins
            text = path.read_text()
            for table in wanted:
                m = re.search(rf"CREATE TABLE {table}(?:_\d+)? \((.*?)\n\s*\);", text, re.S)
                check = m and re.search(r"state TEXT NOT NULL CHECK \(state IN \(([^)]*)\)\)", m.group(1))
                if check:
                    found[table] = {v.strip().strip("'") for v in check.group(1).split(",")}
        assert found == wanted, dialect
