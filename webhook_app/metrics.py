"""Prometheus metrics: counters from the web and worker processes, queue gauges from the store.

Counters and histograms live in prometheus_client's multiprocess mode when
`PROMETHEUS_MULTIPROC_DIR` is set (the command line sets it to a fresh directory for `serve`, `web`
and `worker`, so gunicorn's workers and, under `serve`, the worker process add up in one
`/metrics`; it is removed when the command stops, and gunicorn's `child_exit` marks an exited
worker dead in it: cli/service.py, runtime.py). prometheus_client reads that variable when it is
first imported, which is why the command line sets it before anything imports this module.
Queue depth, oldest pending age, dead letters and decisions are read from the database at scrape
time, so they are right for the whole cluster whichever instance is scraped.

No Flask here: the worker records and serves its metrics without it, and `web/metrics.py` adds the
`/metrics` route. The command line imports this module only in the commands that count (after
setting the directory); importing `webhook_app.cli` loads no prometheus_client (tests/test_metrics.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from webhook_app import wallet_activity
from webhook_app.commercelayer import credentials
from webhook_app.commercelayer.api import CallRecord
from webhook_app.errors import StoreError
from webhook_app.policy import Policy
from webhook_app.policy.activity import REUSED, SAVED
from webhook_app.states import DecisionOutcome, JobResult, JobState
from webhook_app.store import Store

DELIVERIES = Counter(
    "webhook_app_deliveries",
    "Deliveries answered 2xx, by topic and outcome (accepted, duplicate, ignored, replay).",
    ["topic", "outcome"],
)
REJECTIONS = Counter(
    "webhook_app_intake_rejections",
    "Deliveries refused, by reason "
    "(source_not_allowed, invalid_signature, too_large, unsupported_media_type, invalid_payload, "
    "invalid_replay_token, store_unavailable).",
    ["reason"],
)
INTAKE_SECONDS = Histogram(
    "webhook_app_intake_seconds",
    "Time to verify, store and answer a delivery.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
COMMIT_BATCH = Histogram(
    "webhook_app_commit_batch_size",
    "Deliveries per transaction of the group-commit writer (one flush to disk each).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
COMMIT_SECONDS = Histogram(
    "webhook_app_commit_seconds",
    "Time the group-commit writer took to store and flush a batch.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
COMMIT_FAILURES = Counter(
    "webhook_app_commit_failures",
    "Batches the group-commit writer could not commit (each of their requests answered 503).",
)
INTAKE_RESPONSES = Counter(
    "webhook_app_intake_responses",
    "Intake answers by HTTP status code (the 5xx alert; 500s from a bug included).",
    ["code"],
)
REFUSED_BEFORE_THE_APP = Counter(
    "webhook_app_refused_before_the_app",
    "Requests refused before the app saw them, by HTTP status code, whatever the path: by serve's "
    "front (400, 404, 413, 503 past the connection or buffer limits, 505) and by gunicorn's parser "
    "(400, 414, 431) under serve and web. Anyone can send these: they are kept out of the intake's "
    "answers, so a flood of them neither fires nor hides the intake's 5xx alert.",
    ["code"],
)
JOB_ATTEMPTS = Counter(
    "webhook_app_job_attempts",
    "Job attempts by outcome (applied, skipped, guarded, shadow, retry, dead_letter, lost).",
    ["outcome"],
)
DEAD_LETTERS = Counter("webhook_app_dead_letters", "Jobs dead-lettered.")
SAVED_WITHOUT_ENTRY = Counter(
    "webhook_app_saved_without_entry",
    "Saves Commerce Layer accepted after which no wallet entry for the payment source appeared.",
)
DECISIONS = Counter(
    "webhook_app_decisions",
    "Decisions made by this process, by rule, action and outcome.",
    ["rule", "action", "outcome"],
)
ANONYMIZATIONS = Counter(
    "webhook_app_anonymizations",
    "Customers' anonymization events worked, by event (started, completed, cancelled, failed) and"
    " outcome (erased, already_erased, recorded, disabled).",
    ["event", "outcome"],
)
ANONYMIZED_BODIES = Counter(
    "webhook_app_anonymized_bodies",
    "Stored bodies and headers erased because Commerce Layer completed a customer's anonymization.",
)
CL_SECONDS = Histogram(
    "webhook_app_commercelayer_request_seconds",
    "Commerce Layer call latency.",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CL_RESPONSES = Counter(
    "webhook_app_commercelayer_responses",
    "Commerce Layer answers by route and status (`error` when no answer came).",
    ["route", "status"],
)
CL_WAIT = Histogram(
    "webhook_app_commercelayer_rate_limit_wait_seconds",
    "Time waited for the client-side rate limit before a call.",
    buckets=(0, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Set by the worker process. Multiprocess mode: `max` for timestamps (any live worker polling is
# enough), `mostrecent` for what Commerce Layer last said (the newest check wins).
WORKER_LAST_POLL = Gauge(
    "webhook_app_worker_last_poll_timestamp_seconds",
    "When a worker last looked for due jobs (POSIX time).",
    multiprocess_mode="max",
)
CIRCUIT_FAILURES = Gauge(
    "webhook_app_circuit_failure_count",
    "Commerce Layer's consecutive failure count for each webhook (its circuit opens at 30).",
    ["webhook_id", "topic"],
    multiprocess_mode="mostrecent",
)
CIRCUIT_OPEN = Gauge(
    "webhook_app_circuit_open",
    "1 if Commerce Layer's circuit for the webhook is open (it sends nothing until reset).",
    ["webhook_id", "topic"],
    multiprocess_mode="mostrecent",
)
CIRCUIT_LAST_CHECK = Gauge(
    "webhook_app_circuit_last_check_timestamp_seconds",
    "When the circuit guard last read the webhooks' circuits successfully (POSIX time).",
    multiprocess_mode="max",
)
CIRCUIT_RESETS = Counter("webhook_app_circuit_resets", "Open circuits the guard reset.")
BACKFILLED = Counter("webhook_app_backfilled_orders", "Orders a backfill after a circuit reset queued.")

# Agency mode (organizations.py): per organization, for configured organizations only (the
# label set stays bounded); a deployment without WEBHOOK_APP_ORGANIZATIONS records none of these.
ORG_DELIVERIES = Counter(
    "webhook_app_organization_deliveries",
    "Deliveries stored per organization, by outcome (accepted, duplicate, ignored, replay).",
    ["organization", "outcome"],
)
ORG_DECISIONS = Counter(
    "webhook_app_organization_decisions", "Job outcomes per organization.", ["organization", "outcome"]
)
ORG_CL_RESPONSES = Counter(
    "webhook_app_organization_commercelayer_responses",
    "Commerce Layer answers per organization, by status (error: no answer).",
    ["organization", "status"],
)

REASONS = {
    "SourceNotAllowed": "source_not_allowed",
    "InvalidSignature": "invalid_signature",
    "PayloadTooLarge": "too_large",
    "UnsupportedMediaType": "unsupported_media_type",
    "InvalidPayload": "invalid_payload",
    "TokenError": "invalid_replay_token",
    "StoreUnavailable": "store_unavailable",
    "StoreError": "store_unavailable",
    "SchemaOutOfDate": "store_unavailable",
}


def record_call(call: CallRecord) -> None:
    """`CommerceLayerClient(on_call=...)`: latency, status and rate-limit wait of each call."""
    CL_SECONDS.labels(call.route).observe(call.seconds)
    CL_RESPONSES.labels(call.route, str(call.status) if call.status else "error").inc()
    CL_WAIT.observe(call.waited)


def organization_call_recorder(organization: str) -> Callable[[CallRecord], None]:
    """`record_call`, and the call counted for `organization` (agency mode)."""

    def record(call: CallRecord) -> None:
        record_call(call)
        ORG_CL_RESPONSES.labels(organization, str(call.status) if call.status else "error").inc()

    return record


def record_commit_batch(size: int, seconds: float, ok: bool) -> None:
    """`CommitWriter(on_batch=...)`: the size, time and outcome of each group commit."""
    COMMIT_BATCH.observe(size)
    COMMIT_SECONDS.observe(seconds)
    if not ok:
        COMMIT_FAILURES.inc()


def record_worker_event(what: str, fields: dict[str, Any]) -> None:
    """`Worker(observer=...)`: outcomes, dead letters, decisions and anonymizations."""
    if what == "decision":
        outcome = str(fields.get("outcome"))
        JOB_ATTEMPTS.labels(outcome).inc()
        if fields.get("organization"):
            ORG_DECISIONS.labels(str(fields["organization"]), outcome).inc()
        if outcome != JobResult.LOST:
            DECISIONS.labels(str(fields.get("rule")), str(fields.get("action")), outcome).inc()
        if outcome == DecisionOutcome.SAVED_WITHOUT_ENTRY:
            SAVED_WITHOUT_ENTRY.inc()
    elif what == "retry":
        JOB_ATTEMPTS.labels("retry").inc()
    elif what == "dead_letter":
        JOB_ATTEMPTS.labels("dead_letter").inc()
        DEAD_LETTERS.inc()
    elif what == "handled" and "anonymization" in fields:
        ANONYMIZATIONS.labels(str(fields["anonymization"]), str(fields.get("outcome"))).inc()
        ANONYMIZED_BODIES.inc(int(fields.get("erased") or 0))


def record_worker_poll(at: float) -> None:
    """`Worker(on_poll=...)`: the worker looked for jobs (the "worker not polling" alert)."""
    WORKER_LAST_POLL.set(at)


def record_circuit_check(check: Any) -> None:
    """`CircuitGuard(on_check=...)`: what Commerce Layer says of each webhook's circuit."""
    if check.error is not None:
        return
    CIRCUIT_LAST_CHECK.set(time.time())
    for c in check.circuits:
        reset = c.webhook_id in check.reset
        CIRCUIT_FAILURES.labels(c.webhook_id, c.topic).set(0 if reset else c.failures)
        CIRCUIT_OPEN.labels(c.webhook_id, c.topic).set(0 if reset or not c.open else 1)
    if check.reset:
        CIRCUIT_RESETS.inc(len(check.reset))
    for orders in check.backfilled.values():
        BACKFILLED.inc(len(orders))


class StoreCollector(Collector):
    """Gauges read from the database when scraped (with `enforce`, what the worker found of the
    Commerce Layer credentials: shadow mode needs none)."""

    #: A read of the database that took this long or more is kept and shown again for
    #: HOLD_FACTOR times as long (at most HOLD_MAX seconds, and never past a move of the clock by
    #: as much): anyone who can reach /metrics (any local user, on the operator address) could
    #: otherwise make every worker scan the whole decisions table back to back. A read of 0.7 s
    #: (400,000 decisions) is then at most a tenth of a worker's time, however often it is asked;
    #: a cheap read, or any read of a small database (fewer jobs than HOLD_FROM_JOBS: a slow read
    #: there is a busy host, not a big table), is never kept.
    HOLD_FROM_SECONDS = 0.1
    HOLD_FROM_JOBS = 10_000
    HOLD_FACTOR = 10
    HOLD_MAX = 60.0

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        policy: Policy | None = None,
        *,
        enforce: bool = False,
    ) -> None:
        self.store = store
        self.clock = clock
        self.policy = policy  # tells which action a guard both actions share refused
        self.enforce = enforce
        self._lock = threading.Lock()  # the worker's metrics port answers each scrape in a thread
        self._kept: tuple[float, float, float, list[Any]] | None = None  # (until, at, hold, families)

    def collect(self) -> Iterator[Any]:
        """What the database says now, or what an expensive read said moments ago (HOLD_*)."""
        with self._lock:  # concurrent scrapes wait for one read, then share it
            kept = self._kept
            if kept is not None and time.monotonic() < kept[0] and 0 <= self.clock() - kept[1] < kept[2]:
                return iter(kept[3])
            started, at = time.monotonic(), self.clock()
            families = list(self._read())
            took = time.monotonic() - started
            big = _jobs(families) >= self.HOLD_FROM_JOBS
            hold = min(self.HOLD_MAX, took * self.HOLD_FACTOR) if big and took >= self.HOLD_FROM_SECONDS else 0.0
            self._kept = (time.monotonic() + hold, at, hold, families) if hold else None
            return iter(families)

    def _read(self) -> Iterator[Any]:
        up = GaugeMetricFamily("webhook_app_database_up", "1 if the database answered this scrape.")
        try:
            stats = self.store.queue_stats(now=self.clock())
            counts = self.store.decision_counts()
        except StoreError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("webhook_app_queue_jobs", "Jobs by state, whole cluster.", labels=["state"])
        for state in JobState:
            depth.add_metric([state], getattr(stats, state))
        yield depth
        age = GaugeMetricFamily(
            "webhook_app_queue_oldest_pending_age_seconds", "Age of the oldest delivery whose job is not finished."
        )
        age.add_metric([], stats.oldest_pending_age)
        yield age
        total = CounterMetricFamily(
            "webhook_app_recorded_decisions",
            "Decisions in the database by rule, action and outcome, whole cluster.",
            labels=["rule", "action", "outcome"],
        )
        for rule, action, outcome, n in counts:
            total.add_metric([rule, action, outcome], n)
        yield total
        yield from self._wallet()
        if self.enforce:
            yield from self._credentials()
        yield from self._storage()

    def _wallet(self) -> Iterator[Any]:
        """What the service did to wallets, whole cluster (docs/howto/wallet-hygiene.md,
        *Wallet activity*): per activity and reason only; per day and market is the admin page's
        business."""
        try:
            counts = wallet_activity.metric_counts(self.store, self.policy)
            scan = wallet_activity.last_full_scan(self.store)
        except StoreError:
            return
        total = CounterMetricFamily(
            "webhook_app_wallet_activity",
            "Wallet entries saved and reused, saves and reuses refused (reason: the guard or outcome), "
            "expired entries removed, from the stored decisions and operations log.",
            labels=["activity", "reason"],
        )
        for key in ((SAVED, ""), (REUSED, "")):
            counts.setdefault(key, 0)
        for (activity, reason), n in sorted(counts.items()):
            total.add_metric([activity, reason], n)
        yield total
        expired = GaugeMetricFamily(
            "webhook_app_wallet_expired_entries",
            "Wallet entries the last `wallet expired` scan of every wallet found, by state "
            "(expired, expiring, unknown).",
            labels=["state"],
        )
        for state in ("expired", "expiring", "unknown"):
            found = scan.detail.get(state) if scan is not None else 0
            expired.add_metric([state], found if isinstance(found, int) else 0)
        yield expired
        when = GaugeMetricFamily(
            "webhook_app_wallet_expired_scan_timestamp_seconds",
            "When the last `wallet expired` scan of every wallet ran (POSIX time; 0: never).",
        )
        when.add_metric([], scan.at if scan is not None else 0.0)
        yield when

    def _credentials(self) -> Iterator[Any]:
        """1 while Commerce Layer accepts the credentials, 0 while it refuses them (jobs held);
        absent until a worker has asked."""
        try:
            status = self.store.get_status(credentials.NAME)
        except StoreError:
            return
        if status is None or status.state not in (credentials.OK, credentials.REFUSED):
            return
        ok = GaugeMetricFamily(
            "webhook_app_commercelayer_credentials_ok",
            "1 if Commerce Layer accepted the credentials when a worker last asked, 0 if it refused them"
            " (jobs are held until it accepts them).",
        )
        ok.add_metric([], 1 if status.state == credentials.OK else 0)
        yield ok

    def _storage(self) -> Iterator[Any]:
        """How much is kept: the database's size and the oldest delivery (retention working?)."""
        try:
            st = self.store.storage_stats()
        except StoreError:
            return
        size = GaugeMetricFamily("webhook_app_database_bytes", "Size of the database (this service's tables).")
        size.add_metric([], st.bytes)
        yield size
        oldest = GaugeMetricFamily(
            "webhook_app_oldest_delivery_age_seconds", "Age of the oldest stored delivery (0 when none)."
        )
        oldest.add_metric([], max(0.0, self.clock() - st.oldest_received_at) if st.oldest_received_at else 0.0)
        yield oldest
        kept = GaugeMetricFamily("webhook_app_stored_bodies", "Deliveries still carrying their body and headers.")
        kept.add_metric([], st.bodies_kept)
        yield kept


def _jobs(families: list[Any]) -> float:
    """The jobs of every state in what StoreCollector read (0 if the database did not answer)."""
    return float(sum(s.value for f in families if f.name == "webhook_app_queue_jobs" for s in f.samples))


class _Default(Collector):
    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape_registry(store_collector: StoreCollector) -> CollectorRegistry:
    """What one scrape shows: this process's metrics (every process's in multiprocess mode) and
    `store_collector`'s, read from the database now."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
    else:
        registry.register(_Default())
    registry.register(store_collector)
    return registry


def serve_worker_metrics(
    port: int,
    store: Store,
    host: str = "0.0.0.0",  # noqa: S104  # nosec B104  # see docstring
    policy: Policy | None = None,
    *,
    enforce: bool = False,
) -> None:
    """Expose a worker's metrics on their own port (for workers on hosts without a web instance).

    All interfaces by default: Prometheus scrapes the pod over the pod network, and who may reach
    the port is the NetworkPolicy's business (and the firewall's, elsewhere); pass `host` to narrow.
    """
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=scrape_registry(StoreCollector(store, policy=policy, enforce=enforce)))
