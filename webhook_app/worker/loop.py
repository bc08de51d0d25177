"""The worker's loop: claim a job, work one attempt at it, and between jobs prune and beat.

Jobs are leased; a worker that dies loses its lease and another worker takes the job again.
Retryable failures come back after an exponential backoff with jitter (never sooner than a
`Retry-After`), up to `max_attempts`; then the job is dead-lettered with the reason.
Exactly one successful PATCH per order and action: the store's `(order_id, action)` claim lets
one call be in flight and remembers when it is done; after an attempt whose outcome is unknown
(timeout, 5xx, killed worker) the next one reads the order first and does not write again if the
change is already there.

Each claimed job becomes an `Attempt` (attempt.py) that carries that try's state down through
process.py to save.py or reuse.py; the `Worker` keeps only what outlives an attempt: its store,
its organizations (`Tenant`), its clock and the times of its next prune and heartbeat.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from webhook_app.backoff import doubling, retry_delay
from webhook_app.commercelayer import CallRecord, CommerceLayerAPI
from webhook_app.commercelayer.credentials import CredentialsGate, status_name
from webhook_app.config import Settings
from webhook_app.errors import StoreError, StoreUnavailable, storable_text
from webhook_app.policy import Policy
from webhook_app.store import Job, Store, retention
from webhook_app.worker import process
from webhook_app.worker.attempt import Attempt, Outcome, Tenant, note_call
from webhook_app.worker.process import TopicHandler

log = logging.getLogger("webhook_app.worker")

PRUNE_BATCHES_PER_TICK = 4
# How often a polling worker records that it is alive (the `worker` row of `Store.set_status`, its
# `updated_at`): `doctor` calls a worker silent for a minute not running.
HEARTBEAT = "worker"
HEARTBEAT_SECONDS = 10.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        *,
        store: Store,
        policy: Policy,
        settings: Settings,
        client: CommerceLayerAPI | None = None,
        clock: Callable[[], float] = time.time,
        worker_id: str | None = None,
        rng: random.Random | None = None,
        observer: Callable[[str, dict[str, Any]], None] | None = None,
        on_poll: Callable[[float], None] | None = None,
        handlers: Mapping[str, TopicHandler] | None = None,
        credentials: CredentialsGate | None = None,
        tenants: Mapping[str, Tenant] | None = None,
    ) -> None:
        if not settings.shadow and client is None and tenants is None:
            raise ValueError("enforce mode needs a Commerce Layer client")
        self.store = store
        self.settings = settings
        self.clock = clock
        self.id = worker_id or new_worker_id()
        self.rng = rng or random.Random()
        self.observer = observer
        self.on_poll = on_poll
        self.handlers = dict(handlers or {})
        self._next_prune = 0.0  # the first prune runs soon after start
        self._next_beat = 0.0  # the first heartbeat is written at the first poll
        # The one deployment's organization; agency mode: one Tenant per organization, each job
        # worked with its organization's. In enforce mode no job of an organization is attempted
        # while Commerce Layer refuses its credentials.
        self.tenant = Tenant(settings, policy, client, credentials or self._gate(settings, client))
        self.tenants: dict[str, Tenant] | None = None
        if tenants is not None:
            self.tenants = dict(tenants)
            for slug, t in self.tenants.items():
                if t.credentials is None:
                    t.credentials = self._gate(t.settings, t.client, slug=slug)

    @property
    def credentials(self) -> CredentialsGate | None:
        """The deployment's credentials gate (None in shadow mode; agency mode: each Tenant's)."""
        return self.tenant.credentials

    def _gate(
        self, settings: Settings, client: CommerceLayerAPI | None, *, slug: str | None = None
    ) -> CredentialsGate | None:
        """The credentials gate of an enforce-mode client (None in shadow mode)."""
        if client is None or settings.shadow:
            return None
        named: dict[str, Any] = {} if slug is None else {"name": status_name(slug), "organization": slug or "default"}
        return CredentialsGate(
            client=client,
            store=self.store,
            source=self.id,
            clock=self.clock,
            delay=lambda n: retry_delay(n, base=1.0, cap=60.0, rng=self.rng),
            auth_url=settings.cl_auth_url,
            **named,
        )

    # --- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set; finishes the job in hand before returning."""
        if self.tenants is None:
            log.info("worker started", extra={"worker": self.id, "mode": self.tenant.mode})
        else:  # agency mode: each organization's own mode (the deployment's describes none of them)
            modes = {slug or "default": t.settings.mode for slug, t in self.tenants.items()}
            log.info("worker started", extra={"worker": self.id, "mode": "agency", "organizations": modes})
        failures = 0
        while not stop.is_set():
            if self.on_poll is not None:
                self.on_poll(self.clock())
            try:
                busy = self.run_once() is not None
                failures = 0
            except Exception as exc:  # recording a job's failure failed: never die for it
                failures += 1
                wait = doubling(failures, base=1.0, cap=30.0)
                if isinstance(exc, StoreError):
                    log.warning("store unavailable, worker waiting", extra={"error": str(exc), "wait": wait})
                else:
                    log.exception("worker loop error, waiting", extra={"error": _describe(exc), "wait": wait})
                stop.wait(wait)
                continue
            self.maybe_prune()
            self.maybe_heartbeat()
            if not busy:
                self._idle(stop)
        log.info("worker stopped", extra={"worker": self.id})

    def _idle(self, stop: threading.Event) -> None:
        """Wait for the store's wake-up (a job committed), at most the poll interval; `stop` is
        looked at every half second."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.store.wait_for_jobs(min(left, 0.5)):
                return

    def maybe_heartbeat(self) -> None:
        """Every HEARTBEAT_SECONDS, record in the store that a worker polls (`doctor` reads it,
        whichever host it runs on). A failure is logged; the loop's store checks do the rest."""
        now = self.clock()
        if now < self._next_beat:
            return
        self._next_beat = now + HEARTBEAT_SECONDS
        try:
            self.store.set_status(HEARTBEAT, "polling", reason=None, source=self.id, now=now)
        except StoreError as exc:
            log.warning("heartbeat not recorded", extra={"error": str(exc)})

    def maybe_prune(self) -> retention.PruneReport | None:
        """Between jobs, when due: a few prune batches (a backlog is worked off tick by tick, so
        jobs wait at most a few batches). A failure is logged and tried again next interval."""
        now = self.clock()
        if now < self._next_prune:
            return None
        try:
            report = retention.prune_and_record(
                self.store, self.settings, now=now, by=f"worker {self.id}", max_batches=PRUNE_BATCHES_PER_TICK
            )
        except Exception as exc:  # noqa: BLE001 - pruning must never stop the worker
            log.warning("prune failed", extra={"error": _describe(exc)})
            self._next_prune = now + self.settings.prune_interval
            return None
        self._next_prune = now + (self.settings.prune_interval if report.complete else 1.0)
        return report

    def run_once(self) -> Outcome | None:
        """Claim and process one due job; None when nothing is due (or the credentials are refused)."""
        job = self._claim()
        if job is None:
            return None
        claimed_at = self.clock()
        if job.attempts > self.settings.max_attempts:
            # Only a worker that died with the job in hand (its lease ran out) gets a job here:
            # every failure it records dead-letters at the limit.
            return self._attempt(job, claimed_at).dead(
                f"attempts exhausted: {job.attempts - 1} attempts, the last ones ended by their lease running out"
                " (a worker died processing the job)",
                None,
            )
        return self.process_contained(job, claimed_at=claimed_at)

    def _claim(self) -> Job | None:
        lease = self.settings.lease_seconds
        if self.tenants is None:
            if self.tenant.credentials is not None and self.tenant.credentials.holding():
                return None
            return self.store.claim_job(worker=self.id, lease_seconds=lease, now=self.clock())
        # Agency mode: organizations take turns (Store.claim_job); one whose credentials are
        # refused is left out until Commerce Layer accepts them again, the others go on.
        ready = [slug for slug, t in self.tenants.items() if t.credentials is None or not t.credentials.holding()]
        return self.store.claim_job(worker=self.id, lease_seconds=lease, now=self.clock(), organizations=ready)

    def _attempt(self, job: Job, claimed_at: float) -> Attempt:
        """A new attempt at `job`, worked as its organization (agency mode) or the deployment's."""
        tenant = self.tenants[job.organization] if self.tenants is not None else self.tenant
        return Attempt(job, tenant, self.store, self.id, self.clock, self.rng, self.observer, claimed_at)

    def check_credentials_at_start(self) -> None:
        """One line per organization (or the one) whose credentials are used: accepted or refused."""
        tenants = self.tenants.values() if self.tenants is not None else [self.tenant]
        for t in tenants:
            if t.credentials is not None:
                t.credentials.check_at_start()

    def process_contained(self, job: Job, *, claimed_at: float = float("-inf")) -> Outcome:
        """`process`, with any exception caught for this job: recorded, counted, retried with
        backoff and dead-lettered at `max_attempts`. Only an unreachable store escapes (the run
        loop waits for it; the job's lease runs out and the attempt still counts)."""
        attempt = self._attempt(job, claimed_at)
        try:
            return process.run(attempt, self.handlers.get(job.topic))
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.error("job failed unexpectedly", exc_info=exc, extra={"job_id": job.id, "order_id": job.order_id})
            return attempt.unexpected(f"unexpected error: {_describe(exc)}")

    def process(self, job: Job, *, claimed_at: float = float("-inf")) -> Outcome:
        """One attempt at `job` (claimed at `claimed_at`: its leases are extended before a call
        to Commerce Layer unless they were taken a moment ago), in a span continuing the intake's
        trace; Commerce Layer's trace ids recorded on the attempt."""
        return process.run(self._attempt(job, claimed_at), self.handlers.get(job.topic))

    def drain(self, limit: int = 10_000) -> list[Outcome]:
        """Process due jobs until none is left (tests and `worker --once`)."""
        out = []
        for _ in range(limit):
            o = self.run_once()
            if o is None:
                break
            out.append(o)
        return out

    @staticmethod
    def note_call(call: CallRecord) -> None:
        """A client's `on_call`: Commerce Layer's trace id noted on the attempt in progress
        (`attempt.note_call`; `noting_trace_ids` makes an `on_call` that also records metrics)."""
        note_call(call)


def _describe(exc: BaseException) -> str:
    """`Type: message`, storable; the message of our own errors never holds a secret."""
    return storable_text(f"{type(exc).__name__}: {exc}", limit=1000)
