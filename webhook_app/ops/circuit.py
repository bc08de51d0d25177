"""The circuit guard: watch Commerce Layer's side of each webhook, reset and backfill on its own.

Commerce Layer stops calling a webhook after 30 consecutive failures and waits until someone
resets its circuit (`_reset_circuit`); every event in between is lost upstream. `CircuitGuard.check`
reads each webhook's `circuit_state` and `circuit_failure_count` (one `GET /api/webhooks`, through
the client's rate limit), reports them (metrics), logs a warning whenever the count rises from
`warn_failures` on, and, with `auto_reset`, resets an open circuit once this service's own intake
is healthy, then reconciles the gap since the first failure through the normal pipeline
(`ops.reconcile`): the missed orders become deliveries and the worker decides and acts on them as
usual (exactly once per order and action). The first failure is taken from the webhook's
`last_event_callbacks` (the oldest failed callback after the last success), else from when this
guard first saw failures or the open circuit; `backfill_margin` seconds are added before it.
Every reset and backfill is written to the operations log. A backfill that fails is retried at the
next check.

Every worker process runs a guard, so the guards coordinate through the database: a reset and its
backfill are done under a lease per webhook (`Store.take_lease`), and the guard holding it reads
the circuit again first, so a guard whose read predates another's reset does nothing; the
backfill's deliveries are keyed by order (`reconcile.backfill_identity`), so a second backfill of
the same gap queues nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webhook_app.commercelayer import CommerceLayerAPI
from webhook_app.config import Settings
from webhook_app.errors import CommerceLayerError, StoreError
from webhook_app.ops.reconcile import reconcile
from webhook_app.policy import Policy
from webhook_app.store import Store
from webhook_app.timefmt import iso, parse_time

log = logging.getLogger(__name__)

# How long one guard may hold a webhook's reset and backfill before another may take over (it
# gives the lease back as soon as it is done; this bounds a guard that died holding it).
RESET_LEASE_SECONDS = 300.0


@dataclass(frozen=True)
class Circuit:
    """One webhook's circuit as Commerce Layer reports it."""

    webhook_id: str
    topic: str
    callback_url: str
    state: str
    failures: int

    @property
    def open(self) -> bool:
        return self.state == "open"


@dataclass
class Check:
    """What one check saw and did (for the command line and tests)."""

    circuits: list[Circuit] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    backfilled: dict[str, list[str]] = field(default_factory=dict)
    unhealthy: bool = False
    error: str | None = None


def read_circuits(client: CommerceLayerAPI) -> list[Circuit]:
    out = []
    for w in client.list_webhooks():
        a = w.get("attributes") or {}
        out.append(
            Circuit(
                webhook_id=str(w.get("id")),
                topic=str(a.get("topic") or ""),
                callback_url=str(a.get("callback_url") or ""),
                state=str(a.get("circuit_state") or "closed"),
                failures=int(a.get("circuit_failure_count") or 0),
            )
        )
    return out


def first_failure(callbacks: list[dict[str, Any]]) -> float | None:
    """The time of the oldest failed callback after the newest successful one (None: no failure)."""
    timed = []
    for c in callbacks:
        a = c.get("attributes") or {}
        try:
            at = parse_time(str(a.get("created_at")))
        except ValueError:
            continue
        code = str(a.get("response_code") or "")
        timed.append((at, code.startswith("2")))
    earliest = None
    for at, ok in sorted(timed, reverse=True):
        if ok:
            break
        earliest = at
    return earliest


NO_HEALTH_URL = (
    "circuit left open: WEBHOOK_APP_CIRCUIT_HEALTH_URL is not set, so this service's intake cannot be"
    " checked; set it to a web instance's /readyz to let the guard reset circuits"
)


def intake_health(store: Store, url: str = "", *, timeout: float = 3.0) -> Callable[[], bool]:
    """Is this service's intake healthy? `url` (its `/readyz`) answering 200. Without `url` it
    cannot be known (the database answering says nothing of whether anything listens for Commerce
    Layer), so the answer is no, with a warning naming the setting: the guard never resets a circuit
    into an intake it has not checked. `store` is kept for callers; `/readyz` checks the database."""

    def healthy() -> bool:
        if not url:
            log.warning(NO_HEALTH_URL)
            return False
        try:
            # nosec B310: an operator setting checked to be http(s) (config._url)
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310  # nosec B310
                return bool(resp.status == 200)
        except OSError:
            return False

    return healthy


class CircuitGuard:
    def __init__(
        self,
        *,
        client: CommerceLayerAPI,
        store: Store,
        policy: Policy,
        healthy: Callable[[], bool],
        auto_reset: bool = False,
        warn_failures: int = 5,
        backfill_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
        on_check: Callable[[Check], None] | None = None,
        owner: str | None = None,
        organization: str = "",
    ) -> None:
        self.organization = organization  # agency mode: `client` is its, backfills queue under it
        self.client = client
        self.store = store
        self.policy = policy
        self.healthy = healthy
        self.auto_reset = auto_reset
        self.warn_failures = warn_failures
        self.backfill_margin = backfill_margin
        self.clock = clock
        self.on_check = on_check
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._last: dict[str, int] = {}
        self._failing_since: dict[str, float] = {}
        self._backfill_due: dict[str, float] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, *, client: CommerceLayerAPI, store: Store, policy: Policy, **kw: Any
    ) -> CircuitGuard:
        """A guard as the `WEBHOOK_APP_CIRCUIT_*` settings say (`kw`: `on_check`, `organization`, ...)."""
        return cls(
            client=client,
            store=store,
            policy=policy,
            healthy=intake_health(store, settings.circuit_health_url),
            auto_reset=settings.circuit_auto_reset,
            warn_failures=settings.circuit_warn_failures,
            backfill_margin=settings.circuit_backfill_margin,
            **kw,
        )

    def run(self, stop: threading.Event, interval: float) -> None:
        """Check every `interval` seconds until `stop` is set (the worker runs this in a thread)."""
        while not stop.is_set():
            self.check()
            stop.wait(interval)

    def check(self, *, dry_run: bool = False) -> Check:
        result = Check()
        now = self.clock()
        try:
            result.circuits = read_circuits(self.client)
        except CommerceLayerError as exc:
            result.error = str(exc)
            log.warning("circuit check failed", extra={"error": str(exc)})
            self._report(result)
            return result
        for c in result.circuits:
            self._watch(c, now, result)
        open_ = [c for c in result.circuits if c.open]
        if self.auto_reset and not dry_run and (open_ or self._backfill_due):
            if not self.healthy():
                result.unhealthy = True
                log.warning(
                    "circuit left open: this service's intake is not healthy",
                    extra={"webhooks": [c.webhook_id for c in open_]},
                )
            else:
                earlier = list(self._backfill_due)  # backfills that failed at an earlier check
                for c in open_:
                    self._reset(c, now, result)
                for webhook_id in earlier:
                    if webhook_id in self._backfill_due:
                        self._backfill(webhook_id, result)
        self._report(result)
        return result

    def _watch(self, c: Circuit, now: float, result: Check) -> None:
        before = self._last.get(c.webhook_id)
        self._last[c.webhook_id] = c.failures
        if c.failures > 0:
            self._failing_since.setdefault(c.webhook_id, now)
        elif not c.open:
            self._failing_since.pop(c.webhook_id, None)
        fields = {"webhook_id": c.webhook_id, "topic": c.topic, "failures": c.failures, "circuit_state": c.state}
        if c.open:
            result.warned.append(c.webhook_id)
            log.error("Commerce Layer's circuit for this webhook is open: it sends nothing", extra=fields)
        elif c.failures >= self.warn_failures and (before is None or c.failures > before):
            result.warned.append(c.webhook_id)
            log.warning("Commerce Layer's failure count for this webhook is rising", extra=fields)

    def _reset(self, c: Circuit, now: float, result: Check) -> None:
        """Reset and backfill under the webhook's lease, if the circuit is still open then."""
        lease = f"circuit:{self.organization}:{c.webhook_id}" if self.organization else f"circuit:{c.webhook_id}"
        try:
            if not self.store.take_lease(lease, owner=self.owner, seconds=RESET_LEASE_SECONDS, now=self.clock()):
                log.info("another guard is resetting this circuit", extra={"webhook_id": c.webhook_id})
                return
        except StoreError as exc:
            log.warning(
                "circuit left open: the database is unavailable", extra={"webhook_id": c.webhook_id, "error": str(exc)}
            )
            return
        try:
            self._reset_held(c, now, result)
        finally:
            try:
                self.store.release_lease(lease, owner=self.owner)
            except StoreError as exc:  # it runs out by itself
                log.warning("circuit lease not released", extra={"webhook_id": c.webhook_id, "error": str(exc)})

    def _reset_held(self, c: Circuit, now: float, result: Check) -> None:
        try:
            # Our read may predate another guard's reset: look again now that we hold the lease.
            still_open = any(x.webhook_id == c.webhook_id and x.open for x in read_circuits(self.client))
        except CommerceLayerError as exc:
            log.warning("circuit check failed", extra={"webhook_id": c.webhook_id, "error": str(exc)})
            return
        if not still_open:
            return
        since = self._gap_start(c, now)
        try:
            self.client.reset_webhook_circuit(c.webhook_id)
        except CommerceLayerError as exc:
            log.warning("circuit reset failed", extra={"webhook_id": c.webhook_id, "error": str(exc)})
            return
        result.reset.append(c.webhook_id)
        self._last[c.webhook_id] = 0
        self._failing_since.pop(c.webhook_id, None)
        self._backfill_due[c.webhook_id] = since
        detail = {"topic": c.topic, "failures": c.failures, "gap_since": iso(since), "by": "circuit guard"}
        log.warning("circuit reset", extra={"webhook_id": c.webhook_id, **detail})
        self._operation("circuit_reset", c.webhook_id, detail)
        self._backfill(c.webhook_id, result)  # still under the lease

    def _gap_start(self, c: Circuit, now: float) -> float:
        candidates = [self._failing_since.get(c.webhook_id, now)]
        try:
            found = first_failure(self.client.list_event_callbacks(c.webhook_id))
        except CommerceLayerError as exc:
            log.warning("event callbacks unreadable", extra={"webhook_id": c.webhook_id, "error": str(exc)})
            found = None
        if found is not None:
            candidates.append(found)
        return min(candidates)

    def _backfill(self, webhook_id: str, result: Check) -> None:
        since = self._backfill_due[webhook_id]
        start = since - self.backfill_margin
        try:
            done = reconcile(
                self.client, self.store, self.policy, since=start, clock=self.clock, organization=self.organization
            )
        except (CommerceLayerError, StoreError) as exc:
            log.warning(
                "backfill failed; retried at the next check", extra={"webhook_id": webhook_id, "error": str(exc)}
            )
            return
        del self._backfill_due[webhook_id]
        result.backfilled[webhook_id] = done.missing
        detail = {
            "since": iso(start),
            "listed": done.listed,
            "missing": len(done.missing),
            "queued": len(done.queued),
            "orders": ",".join(done.missing[:50]),
        }
        log.warning("backfill after circuit reset", extra={"webhook_id": webhook_id, **detail})
        self._operation("backfill", webhook_id, detail)

    def _operation(self, kind: str, subject: str, detail: dict[str, Any]) -> None:
        try:
            self.store.record_operation(
                kind, subject=subject, detail=detail, now=self.clock(), organization=self.organization
            )
        except StoreError as exc:
            log.error("operation not recorded", extra={"kind": kind, "subject": subject, "error": str(exc)})

    def _report(self, result: Check) -> None:
        if self.on_check is not None:
            self.on_check(result)
