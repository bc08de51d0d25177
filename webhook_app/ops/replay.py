"""Replaying recorded deliveries: to staging, or into this service again on purpose.

Bodies are sent byte for byte as recorded, re-signed with the target's webhook secret, with the
original topic header. With a replay key each request carries a short-lived replay token bound
to its body, so a target running webhook-app stores it as a new delivery marked as a replay
instead of dropping it as a duplicate. Sending is rate-limited and ends with a summary of the
answers by status.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import requests

from webhook_app.errors import InvalidPayload, UsageError
from webhook_app.events import SIGNATURE_HEADER, TOPIC_HEADER, check_topic, topic_from_file_name
from webhook_app.signing import sign
from webhook_app.states import JobState
from webhook_app.store import DeliveryFilter, Store
from webhook_app.tokens import REPLAY, REPLAY_HEADER, Tokens, make_replay_token, replay_scope


@dataclass(frozen=True)
class Recorded:
    """One body to replay and where it came from."""

    source: str  # "delivery 12" or a file name
    topic: str
    body: bytes = field(repr=False)
    order_id: str | None = None
    # Agency mode: its organization (the replay token names it: the intake binds tokens to the
    # organization of the path, so a token for one organization's delivery is no good at another's)
    organization: str = ""


def from_store(store: Store, flt: DeliveryFilter, *, dead_only: bool = False) -> list[Recorded]:
    """Recorded deliveries matching `flt`, oldest first (`dead_only`: dead-lettered jobs only)."""
    if dead_only:
        flt = replace(flt, status=JobState.DEAD)
    out = [
        Recorded(f"delivery {d.id}", d.topic, d.body, d.order_id, d.organization)
        for d in store.iter_deliveries(replace(flt, with_body=True))
        if d.body_removed is None  # a pruned or forgotten body cannot be replayed
    ]
    return list(reversed(out))


def from_files(paths: Iterable[str], *, topic: str | None = None, organization: str = "") -> list[Recorded]:
    """Bodies from files: a raw webhook body (topic from `--topic` or the file name) or an
    exported record `{"topic": ..., "body": "<the raw body as a string>"}`; `organization`: whose
    path they go to (agency mode)."""
    out = []
    for name in paths:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            raise UsageError(f"{name}: cannot read: {exc.strerror}") from None
        t = topic
        body = raw
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("body"), str) and isinstance(doc.get("topic"), str):
            t, body = doc["topic"], doc["body"].encode("utf-8")
        if t is None:
            t = topic_from_file_name(name)
            if t is None:
                raise UsageError(f"{name}: no topic: give --file-topic or name the file like orders.place.NAME.json")
        try:
            out.append(Recorded(name, check_topic(t), body, organization=organization))
        except InvalidPayload as exc:
            raise UsageError(f"{name}: {exc}") from None
    return out


@dataclass
class Summary:
    sent: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status.items()))
        return f"replayed {self.sent}: {parts or 'nothing sent'}"


class Replayer:
    def __init__(
        self,
        *,
        target: str,
        secret: str,
        replay_keys: tuple[str, ...] = (),
        token_ttl: float = 300,
        rate: float = 10.0,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self._secret = secret
        self.tokens = Tokens(REPLAY, replay_keys, clock) if replay_keys else None
        self.token_ttl = token_ttl
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.timeout = timeout
        self.session = session or requests.Session()
        self.clock = clock
        self.sleep = sleep

    def headers(self, item: Recorded) -> dict[str, str]:
        h = {
            "Content-Type": "application/json",
            TOPIC_HEADER: item.topic,
            SIGNATURE_HEADER: sign(item.body, secret=self._secret),
        }
        if self.tokens is not None:
            scope = replay_scope(item.topic, item.organization)
            h[REPLAY_HEADER] = make_replay_token(self.tokens, item.body, topic=scope, ttl=self.token_ttl)
        return h

    def run(self, items: list[Recorded], *, progress: TextIO | None = sys.stderr) -> Summary:
        summary = Summary()
        next_at = self.clock()
        for n, item in enumerate(items, start=1):
            wait = next_at - self.clock()
            if wait > 0:
                self.sleep(wait)
            next_at = max(next_at, self.clock()) + self.interval
            try:
                # Never follow a redirect: requests would re-send the signed body and the replay
                # token to wherever the Location points.
                r = self.session.post(
                    self.target,
                    data=item.body,
                    headers=self.headers(item),
                    timeout=self.timeout,
                    allow_redirects=False,
                )
                status = str(r.status_code)
                if 300 <= r.status_code < 400:
                    summary.failures.append(f"{item.source}: HTTP {r.status_code} (a redirect: not followed)")
                elif r.status_code >= 400:
                    summary.failures.append(f"{item.source}: HTTP {r.status_code}")
            except requests.RequestException as exc:
                status = "error"
                summary.failures.append(f"{item.source}: {type(exc).__name__}")
            summary.sent += 1
            summary.by_status[status] += 1
            if progress is not None:
                _bar(progress, n, len(items))
        return summary

    def close(self) -> None:
        self.session.close()


def describe(items: list[Recorded], *, target: str, with_token: bool) -> Iterator[str]:
    """What a dry run prints: one line per request that would be sent."""
    for item in items:
        yield (
            f"POST {target} topic={item.topic} order={item.order_id or '-'} bytes={len(item.body)} "
            f"from={item.source}" + (" +replay-token" if with_token else "")
        )


def _bar(out: TextIO, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    end = "\n" if done == total else ""
    if out.isatty() or done == total:
        out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
        out.flush()
