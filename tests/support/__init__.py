"""What the tests share besides fixtures: the test secrets and signed headers, settings, a hand
clock, the test PostgreSQL, a child's environment. Test modules import these from here (`from support import SECRET`),
never from `conftest`, which holds only fixtures and hooks (ruff's TID251 bans importing it)."""

from __future__ import annotations

from support.env import base_env
from support.postgres import PG_URL, pg_schema_url, postgres_available, require_postgres
from support.settings import DATA, Clock, make_settings
from support.signing import OTHER_SECRET, SECRET, signed_headers

__all__ = [
    "DATA",
    "OTHER_SECRET",
    "PG_URL",
    "SECRET",
    "Clock",
    "base_env",
    "make_settings",
    "pg_schema_url",
    "postgres_available",
    "require_postgres",
    "signed_headers",
]
