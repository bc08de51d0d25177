"""Identifiers and timestamps shaped like Commerce Layer's.

Ids are 10 ASCII letters (`wBXVhZOmXO`), drawn from a seedable generator so that seeded scenarios
always produce the same ids. Timestamps are kept as integer milliseconds since the epoch (so that
comparisons with the ISO strings clients send back are exact) and rendered as ISO 8601 UTC with
milliseconds
(`2022-09-30T21:11:55.783Z`), as Commerce Layer does.
"""

from __future__ import annotations

import hashlib
import random
import string
import threading
from datetime import UTC, datetime, timedelta

ID_ALPHABET = string.ascii_letters
ID_LENGTH = 10


class IdFactory:
    """Unique Commerce Layer-like ids from `random.Random(seed)`; thread-safe."""

    def __init__(self, seed: int | str | None = None) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - ids for a test double, not secrets
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def new(self) -> str:
        with self._lock:
            while True:
                candidate = "".join(self._rng.choice(ID_ALPHABET) for _ in range(ID_LENGTH))
                if candidate not in self._used:
                    self._used.add(candidate)
                    return candidate

    def reserve(self, ident: str) -> None:
        """Mark an id given by a scenario as taken; ValueError if it already is."""
        with self._lock:
            if ident in self._used:
                raise ValueError(f"id {ident!r} is already used")
            self._used.add(ident)

    def clone(self) -> IdFactory:
        """An independent copy (same sequence to come, same ids taken)."""
        twin = IdFactory()
        with self._lock:
            twin._rng.setstate(self._rng.getstate())
            twin._used = set(self._used)
        return twin

    def release(self, ident: str) -> None:
        with self._lock:
            self._used.discard(ident)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def millis(timestamp: float) -> int:
    """POSIX seconds (e.g. `time.time()`) -> integer milliseconds, truncated."""
    return int(timestamp * 1000)


def iso(ms: int) -> str:
    """`1664572315783` -> `2022-09-30T21:11:55.783Z`."""
    moment = EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso_micros(value: str) -> int:
    """An ISO 8601 timestamp (`Z` or an offset; naive means UTC) -> integer microseconds.

    ValueError if it is not one. Compare with a stored timestamp as `ms * 1000`.
    """
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def parse_iso(value: str) -> int:
    """An ISO 8601 timestamp -> integer milliseconds (truncated); ValueError if it is not one."""
    return parse_iso_micros(value) // 1000


def short_id(*parts: str) -> str:
    """A stable 10-letter id derived from `parts` (for records the sandbox derives)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:10])
