"""Shared fixtures: settings, a real SQLite store in a temporary directory, the fake Commerce Layer."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakecl import FakeCommerceLayer  # noqa: E402

from webhook_app.config import Settings, parse_rate_limits  # noqa: E402
from webhook_app.signing import WebhookSecret, sign  # noqa: E402
from webhook_app.store.sqlite import SQLiteStore  # noqa: E402

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
def fake_cl() -> Iterator[FakeCommerceLayer]:
    with FakeCommerceLayer() as fake:
        yield fake


def signed_headers(body: bytes, topic: str = "orders.place", *, secret: str = SECRET,
                   content_type: str = "application/json") -> dict[str, str]:
    return {"Content-Type": content_type, "X-CommerceLayer-Topic": topic,
            "X-CommerceLayer-Signature": sign(body, secret=secret)}


@pytest.fixture(params=["sqlite"])
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
    for s in made:
        s.close()


@pytest.fixture
def store(store_factory):
    return store_factory()
