"""Time as text, one way everywhere: ISO 8601 in UTC with a `Z`, and the `--since` durations."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import overload

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@overload
def iso(t: float, *, timespec: str = ...) -> str: ...
@overload
def iso(t: None, *, timespec: str = ...) -> None: ...
@overload
def iso(t: float | None, *, timespec: str = ...) -> str | None: ...


def iso(t: float | None, *, timespec: str = "milliseconds") -> str | None:
    """`2026-12-01T19:30:00.123Z` (or to the second with `timespec="seconds"`); None stays None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_time(value: str) -> float:
    """An ISO 8601 time (`Z` or an offset; none means UTC) as a POSIX timestamp; ValueError if not one."""
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_since(value: str, *, now: float) -> float:
    """`24h`, `30m`, `7d`, `90s` before `now`, or an ISO 8601 time; ValueError saying what is expected."""
    m = _DURATION.fullmatch(value.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return parse_time(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration like 24h, 30m, 7d or an ISO 8601 time") from None
