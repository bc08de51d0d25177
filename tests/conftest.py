"""Fixtures (and hooks) only: settings, a real SQLite store in a temporary directory, the fake
Commerce Layer, a store per backend. Shared helpers are in `tests/support/` (import them from
`support`, never from `conftest`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import Clock, make_settings, pg_schema_url, require_postgres
from support.fakecl import FakeCommerceLayer
from support.procs import Service

from webhook_app.config import Settings
from webhook_app.store.sqlite import SQLiteStore

pytest_plugins = ["support.secret_scan"]  # fails the session if a secret shows up in any output


def pytest_configure(config: pytest.Config) -> None:
    """Coverage's `fail_under` ([tool.coverage.report]) is the whole suite's figure: a run of
    chosen files, or of a subset (-m, -k, --deselect), still prints the report but is not held
    to it (an explicit --cov-fail-under is)."""
    cov = config.pluginmanager.get_plugin("_cov")  # pytest-cov, when coverage is on
    whole_suite = config.args_source is pytest.Config.ArgsSource.TESTPATHS and not (
        config.option.markexpr or config.option.keyword or config.option.deselect
    )
    if cov is not None and not whole_suite and config.getoption("cov_fail_under") is None:
        cov.options.cov_fail_under = 0


@pytest.fixture
def clock() -> Clock:
    return Clock()


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
