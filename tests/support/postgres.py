"""The test PostgreSQL (127.0.0.1:5432, or WEBHOOK_APP_TEST_DATABASE_URL): is it there, and a
private schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_URL = os.environ.get("WEBHOOK_APP_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_available() -> str | None:
    """None if the test PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is not reachable: {str(exc).strip().splitlines()[0]}"
    return None


def require_postgres() -> None:
    """Skip (visibly) without PostgreSQL, except in CI where it must run."""
    why = postgres_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL: {why}")
        pytest.skip(why)


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh, private schema, dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
