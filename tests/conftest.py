"""Shared fixtures: settings, a real SQLite store in a temporary directory, the fake Commerce Layer."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakecl import FakeCommerceLayer  # noqa: E402
from procs import Service  # noqa: E402

from webhook_app.config import Settings, parse_rate_limits  # noqa: E402
from webhook_app.signing import WebhookSecret, sign  # noqa: E402
from webhook_app.store.sqlite import SQLiteStore  # noqa: E402

pytest_plugins = ["secret_scan"]  # fails the session if a secret shows up in any output

SECRET = "whsec-test-0123456789abcdef"
OTHER_SECRET = "whsec-other-fedcba9876543210"
DATA = Path(__file__).parent / "data"


class Clock:
    """A clock tests move by hand."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        webhook_secrets=(WebhookSecret("main", SECRET.encode()), WebhookSecret("old", OTHER_SECRET.encode())),
        database_url=f"sqlite:///{tmp_path / 'test.db'}",
        cl_rate_limits=parse_rate_limits(""),
        cl_auth_rate_limits=parse_rate_limits(""),
    )
    return base.with_overrides(**overrides)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **kw: make_settings(tmp_path, **kw)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "store.db"))
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def procs() -> Iterator[list[Service]]:
    """`Service`s a test starts, stopped in reverse order at its end."""
    started: list[Service] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def fake_cl() -> Iterator[FakeCommerceLayer]:
    with FakeCommerceLayer() as fake:
        yield fake


def signed_headers(
    body: bytes, topic: str = "orders.place", *, secret: str = SECRET, content_type: str = "application/json"
) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "X-CommerceLayer-Topic": topic,
        "X-CommerceLayer-Signature": sign(body, secret=secret),
    }


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request, tmp_path):
    """A factory of connections to one fresh database, for each backend."""
    made = []
    if request.param == "sqlite":
        path = str(tmp_path / "contract.db")
        SQLiteStore(path).migrate()

        def factory():
            s = SQLiteStore(path)
            made.append(s)
            return s

        yield factory
    else:
        require_postgres()
        from webhook_app.store.postgres import PostgresStore

        with pg_schema_url() as url:
            setup = PostgresStore(url)
            setup.migrate()
            setup.close()

            def factory():
                s = PostgresStore(url)
                made.append(s)
                return s

            yield factory
            for s in made:
                s.close()
            made.clear()
    for s in made:
        s.close()


@pytest.fixture
def store(store_factory):
    return store_factory()
