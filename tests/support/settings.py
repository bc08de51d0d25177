"""Settings for a test (both test secrets, SQLite under the test's directory), a clock moved by
hand, and the test data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.signing import OTHER_SECRET, SECRET
from webhook_app.config import Settings, parse_rate_limits
from webhook_app.signing import WebhookSecret

DATA = Path(__file__).parent.parent / "data"


class Clock:
    """A clock tests move by hand."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        webhook_secrets=(WebhookSecret("main", SECRET.encode()), WebhookSecret("old", OTHER_SECRET.encode())),
        database_url=f"sqlite:///{tmp_path / 'test.db'}",
        cl_rate_limits=parse_rate_limits(""),
        cl_auth_rate_limits=parse_rate_limits(""),
    )
    return base.with_overrides(**overrides)
