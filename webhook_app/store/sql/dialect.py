"""What SQLite and PostgreSQL spell differently, named once per dialect (the rest of the SQL
is shared, with `?` placeholders that the PostgreSQL cursor turns into `%s`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    name: str
    #: ends a select of rows to change: lock them, skipping rows another transaction holds (a
    #: worker claiming jobs passes over the ones others are claiming)
    lock_skip_locked: str
    #: ends a select of one row to change: lock it, waiting for another holder
    lock_row: str
    #: a `decided_at` (POSIX seconds) as whole days since the epoch, UTC
    day_of_decision: str
    #: a row if the `schema_version` table exists, none if not (an empty database)
    schema_table_exists: str


#: SQLite: one writer at a time (BEGIN IMMEDIATE), so there is nothing to lock row by row
SQLITE = Dialect(
    name="sqlite",
    lock_skip_locked="",
    lock_row="",
    day_of_decision="CAST(decided_at / 86400 AS INTEGER)",
    schema_table_exists="SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
)
POSTGRES = Dialect(
    name="postgres",
    lock_skip_locked=" FOR UPDATE SKIP LOCKED",
    lock_row=" FOR UPDATE",
    day_of_decision="CAST(FLOOR(decided_at / 86400) AS BIGINT)",
    schema_table_exists="SELECT 1 AS present WHERE to_regclass('schema_version') IS NOT NULL",
)
