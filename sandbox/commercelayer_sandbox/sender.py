"""The webhook sender: delivers events to callback URLs the way Commerce Layer does.

Each delivery is a compact JSON body signed with `base64(HMAC-SHA256(shared_secret, body))` in
`X-CommerceLayer-Signature`, with `X-CommerceLayer-Topic` and `Content-Type: application/json`.
A 2xx within the timeout (the whole answer, from the start of the call) is a success; any other
status, a timeout or a connection error is a failure. A failed delivery is retried up to
`max_retries` times after `SenderConfig.backoff` delays (the same bytes each time). Each webhook
counts consecutive failures: a success resets the count; reaching `circuit_threshold` opens the
circuit and nothing more is sent for that webhook, pending retries included, until the circuit
is reset (`_reset_circuit`).

Every attempt is kept as an `EventCallback`. Deliveries run on a pool of worker threads fed by a
time-ordered queue; `drain()` waits until the queue is empty and nothing is in flight.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from commercelayer_sandbox.config import SenderConfig
from commercelayer_sandbox.faults import Faults
from commercelayer_sandbox.model import EventCallback
from commercelayer_sandbox.state import SandboxState
from commercelayer_sandbox.stats import Stats

log = logging.getLogger(__name__)
USER_AGENT = "webhook-app-sandbox (Commerce Layer webhook double)"


def sign(body: bytes, *, secret: str) -> str:
    """The `X-CommerceLayer-Signature` value Commerce Layer computes for `body`."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode("ascii")


class _FromAddress(HTTPAdapter):
    """Connections from one local address (`SenderConfig.source_address`)."""

    def __init__(self, address: str) -> None:
        self._address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)


@dataclass
class Delivery:
    event_id: str
    webhook_id: str
    topic: str
    body: bytes = field(repr=False)
    attempt: int = 1


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    delivery: Delivery = field(compare=False)


class Sender:
    """A pool of delivery threads; `start()` before `enqueue()`, `stop()` when done."""

    def __init__(
        self,
        state: SandboxState,
        *,
        config: Callable[[], SenderConfig],
        faults: Faults,
        stats: Stats,
        now_ms: Callable[[], int],
    ) -> None:
        self._state = state
        self._config = config
        self._faults = faults
        self._stats = stats
        self._now_ms = now_ms
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._threads: list[threading.Thread] = []
        self._retire = 0
        self._stopping = False
        self._started = False
        self._rng = random.Random(0)  # noqa: S311 - reorder_seconds: the same order every run

    # -- lifecycle --

    def start(self) -> None:
        with self._cond:
            self._stopping = False
            self._started = True
        self.resize(self._config().concurrency)

    def resize(self, workers: int) -> None:
        """Run `workers` delivery threads (idle extra threads exit); no-op until started."""
        with self._cond:
            if not self._started:
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            alive = len(self._threads) - self._retire
            if workers > alive:
                for _ in range(workers - alive):
                    t = threading.Thread(target=self._run, name="sandbox-sender", daemon=True)
                    self._threads.append(t)
                    t.start()
            elif workers < alive:
                self._retire += alive - workers
                self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Drop queued deliveries and wait for in-flight ones (bounded by their timeout)."""
        with self._cond:
            self._stopping = True
            self._started = False
            self._heap.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._retire = 0

    def clear(self) -> None:
        """Forget every queued delivery (in-flight ones finish)."""
        with self._cond:
            self._heap.clear()
            self._cond.notify_all()

    # -- queue --

    def enqueue(self, delivery: Delivery, *, delay: float = 0.0) -> None:
        reorder = self._config().reorder_seconds
        with self._cond:
            if reorder and delivery.attempt == 1:
                delay += self._rng.uniform(0.0, reorder)
            heapq.heappush(self._heap, _Job(time.monotonic() + delay, next(self._seq), delivery))
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + self._in_flight

    def drain(self, timeout: float) -> bool:
        """Wait until every delivery and retry is done; False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._heap and not self._in_flight, timeout)

    def _take(self) -> _Job | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._retire:
                    self._retire -= 1
                    return None
                now = time.monotonic()
                if self._heap and self._heap[0].due <= now:
                    self._in_flight += 1
                    return heapq.heappop(self._heap)
                self._cond.wait(self._heap[0].due - now if self._heap else None)

    def _run(self) -> None:
        while (job := self._take()) is not None:
            try:
                self._deliver(job.delivery)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    # -- one attempt --

    def _deliver(self, d: Delivery) -> None:
        state = self._state
        with state.lock:
            hook = state.webhooks.get(d.webhook_id)
            if hook is None:
                self._stats.count("sender.skipped_deleted_webhook")
                return
            if hook.circuit_state == "open":
                self._stats.count("sender.skipped_circuit_open")
                return
            url, secret = hook.callback_url, hook.shared_secret
        cfg = self._config()
        timeout = self._faults.webhook_timeout(d.webhook_id) or cfg.timeout
        signature = sign(d.body, secret=secret)
        headers = {
            "Content-Type": "application/json",
            "X-CommerceLayer-Topic": d.topic,
            "X-CommerceLayer-Signature": signature,
            "User-Agent": USER_AGENT,
        }
        code: int | None = None
        lost = False
        started = time.monotonic()
        try:
            with requests.Session() as session:
                session.trust_env = False
                if cfg.source_address:
                    session.mount("http://", _FromAddress(cfg.source_address))
                    session.mount("https://", _FromAddress(cfg.source_address))
                with session.post(
                    url, data=d.body, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    code, message = response.status_code, response.reason or ""
        except requests.Timeout:
            message = f"timeout: no answer within {timeout:g} s"
        except requests.RequestException as exc:
            message = f"connection error: {type(exc).__name__}"
        # requests' timeouts bound the connection and each read, not the whole answer: one
        # trickled in (or a connection accepted late, then answered) may take far longer. The
        # endpoint has `timeout` seconds to answer, from the start of the call.
        if code is not None and time.monotonic() - started > timeout:
            message = f"timeout: no answer within {timeout:g} s ({code} came after {time.monotonic() - started:.3g} s)"
            code = None
        if code is not None and self._faults.lose_answer(d.webhook_id):
            lost = True
            message = f"timeout: no answer within {timeout:g} s (sandbox fault: {code} was lost)"
            code = None
        ok = code is not None and 200 <= code < 300
        duration = (time.monotonic() - started) * 1000
        self._after_attempt(d, url, signature, code, message, ok, lost, duration, cfg)

    def _after_attempt(
        self,
        d: Delivery,
        url: str,
        signature: str,
        code: int | None,
        message: str,
        ok: bool,
        lost: bool,
        duration: float,
        cfg: SenderConfig,
    ) -> None:
        state, stats = self._state, self._stats
        retry = False
        with state.lock:
            callback = EventCallback(
                id=state.ids.new(),
                webhook_id=d.webhook_id,
                event_id=d.event_id,
                topic=d.topic,
                attempt=d.attempt,
                callback_url=url,
                body=d.body,
                signature=signature,
                response_code=code,
                response_message=message,
                succeeded=ok,
                duration_ms=round(duration, 3),
                created_at=self._now_ms(),
                lost_answer=lost,
            )
            state.callbacks.append(callback)
            hook = state.webhooks.get(d.webhook_id)
            if hook is not None:
                if ok:
                    hook.circuit_failure_count = 0
                else:
                    hook.circuit_failure_count += 1
                    if hook.circuit_state == "closed" and hook.circuit_failure_count >= cfg.circuit_threshold:
                        hook.circuit_state = "open"
                        stats.count("sender.circuits_opened")
                        log.info("sandbox: circuit of webhook %s opened", hook.id)
                retry = not ok and hook.circuit_state == "closed" and d.attempt <= cfg.max_retries
        stats.count("sender.attempts")
        stats.count("sender.successes" if ok else "sender.failures")
        if lost:
            stats.count("sender.lost_answers")
        if retry:
            stats.count("sender.retries_scheduled")
            self.enqueue(
                Delivery(d.event_id, d.webhook_id, d.topic, d.body, d.attempt + 1),
                delay=cfg.backoff(d.attempt),
            )
        elif not ok:
            stats.count("sender.gave_up")
