"""`Sandbox`: one emulated Commerce Layer organization and everything around it.

It ties together the records (`state`), configuration, rate limiter, fault rules, counters and
request log, and the webhook sender, and offers the operations both the HTTP layer and tests
use: loading scenarios, resetting, changing configuration, triggering events. It knows no HTTP
itself; `api.create_sandbox_app(sandbox)` serves it and `server.SandboxServer` runs it.
"""

from __future__ import annotations

import copy
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from commercelayer_sandbox import anonymization, tokens
from commercelayer_sandbox.config import SandboxConfig
from commercelayer_sandbox.errors import SandboxError, not_found
from commercelayer_sandbox.faults import Faults
from commercelayer_sandbox.model import Customer, Event, OAuthClient, Order, Token, Webhook
from commercelayer_sandbox.orders import ORDER_TOPICS, apply_transition
from commercelayer_sandbox.ratelimit import SlidingWindowLimiter
from commercelayer_sandbox.render import IncludeTree, Renderer, parse_include
from commercelayer_sandbox.seed import load_records
from commercelayer_sandbox.sender import Delivery, Sender
from commercelayer_sandbox.state import SandboxState
from commercelayer_sandbox.stats import Stats
from commercelayer_sandbox.timeutil import millis


def compact(document: Any) -> bytes:
    """Compact JSON, as Commerce Layer sends it (UTF-8, no spaces)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Sandbox:
    """An in-memory Commerce Layer organization with its webhook sender.

    `clock` gives POSIX seconds (timestamps, token expiry); `monotonic` drives rate-limit
    windows and fault spells; `id_seed` makes generated ids reproducible.
    """

    def __init__(
        self,
        *,
        config: SandboxConfig | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        id_seed: int | str | None = 0,
        limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        self._clock = clock
        self._base_config = config or SandboxConfig()
        #: Settings that win over a scenario's `[sandbox]` table (command line, test fixtures).
        self._overrides: dict[str, Any] = {}
        self.config = self._base_config
        self._id_seed = id_seed
        self.state = SandboxState(id_seed=id_seed)
        self.stats = Stats(log_size=self.config.request_log_size)
        #: Commerce Layer counts rate limits per client address, across organizations: the
        #: organizations of one sandbox process share one limiter (`organizations.py`), which a
        #: scenario load in one of them then leaves alone.
        self.limiter = limiter or SlidingWindowLimiter(monotonic)
        self._shared_limiter = limiter is not None
        self.faults = Faults(monotonic)
        self.sender = Sender(
            self.state,
            config=lambda: self.config.sender,
            faults=self.faults,
            stats=self.stats,
            now_ms=self.now_ms,
        )
        #: Set while stopping: hanging requests wake up and drop their connection.
        self.stopping = threading.Event()
        self.initial_scenario: dict[str, Any] | None = None
        self._config_lock = threading.Lock()
        #: The key access tokens are signed with (HS512; new for every sandbox).
        self.token_secret = secrets.token_bytes(32)
        self._rand = random.Random()  # noqa: S311 - the tokens' `rand` claim, not a secret

    # -- time --

    def now(self) -> float:
        return self._clock()

    def now_ms(self) -> int:
        return millis(self._clock())

    # -- lifecycle --

    def start(self) -> None:
        self.stopping.clear()
        self.sender.start()

    def stop(self) -> None:
        self.stopping.set()
        self.sender.stop(timeout=self.config.sender.timeout + 2)

    # -- configuration and scenarios --

    def set_overrides(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """Settings that stay in force across scenario loads and resets (checked, then applied)."""
        self.config.updated(changes)
        self._overrides = _merge(self._overrides, changes)
        return self.update_config(changes)

    def update_config(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """Apply configuration changes (SandboxError if any is bad; then nothing changes)."""
        with self._config_lock:
            new = self.config.updated(changes)
            self.config = new
        self.stats.resize_log(new.request_log_size)
        if "sender" in changes:
            self.sender.resize(new.sender.concurrency)
        return new

    def load_scenario(
        self, scenario: Mapping[str, Any], *, replace: bool = True, initial: bool = False
    ) -> dict[str, Any]:
        """Load a scenario (by default replacing everything); a summary of what it holds.

        With `initial`, it is also what `reset()` goes back to.
        """
        _one_organization(scenario)
        # Everything is checked before anything changes: a refused scenario leaves all as it was.
        config = self._base_config if replace else self.config
        if "sandbox" in scenario:
            config = config.updated(scenario["sandbox"], "sandbox")
        config = config.updated(self._overrides)
        Faults().configure(scenario.get("faults", {}))
        with self.state.lock:
            candidate = SandboxState(id_seed=self._id_seed) if replace else self.state.copy()
            counts, timeouts = load_records(candidate, scenario, now=self.now_ms())
            if replace:
                self.sender.clear()
                self.stats.reset()
                if not self._shared_limiter:
                    self.limiter.reset()
                self.faults.clear()
            self.state.adopt(candidate)
        with self._config_lock:
            self.config = config
        self.stats.resize_log(config.request_log_size)
        self.sender.resize(config.sender.concurrency)
        if "faults" in scenario:
            self.faults.configure(scenario["faults"])
        for hook_id, seconds in timeouts.items():
            self.faults.set_webhook_timeout(hook_id, seconds)
        if initial:
            self.initial_scenario = copy.deepcopy(dict(scenario))
        return self.summary(counts)

    def summary(self, loaded: Mapping[str, int] | None = None) -> dict[str, Any]:
        """What the sandbox holds (and, given `loaded`, what a scenario load added)."""
        return summarize(self.state, loaded)

    def reset(self, *, reload: bool = True) -> dict[str, Any]:
        """Back to the initial scenario (or empty): its config, no faults, zero stats."""
        if reload and self.initial_scenario is not None:
            return self.load_scenario(self.initial_scenario)
        return self.load_scenario({})

    # -- tokens --

    def issue_token(self, client: OAuthClient, scope: str) -> Token:
        """A signed JWT carrying what Commerce Layer's tokens carry (see `tokens.py`)."""
        now = self.now()
        exp, expires_at = tokens.lifetime(now, self.config.token_ttl)
        claims = tokens.claims_for(self.config, client, scope, now=now, exp=exp, rand=self._rand.random())
        market = tokens.market_claim(self.state, scope)
        if market is not None:
            claims["market"] = market
        value = tokens.encode(claims, secret=self.token_secret)
        return self.state.issue_token(client, scope, value=value, now=now, expires_at=expires_at, claims=claims)

    # -- events --

    def renderer(
        self,
        base: str = "",
        *,
        trace_id: str | None = None,
        fields: Mapping[str, frozenset[str]] | None = None,
    ) -> Renderer:
        """A renderer for one answer (`trace_id` set) or one webhook body (`trace_id` None)."""
        cfg = self.config
        return Renderer(
            self.state,
            base=base,
            organization_id=cfg.organization_id,
            mode=cfg.mode,
            trace_id=trace_id,
            fields=fields,
        )

    def webhook_body(self, order: Order, hook: Webhook, topic: str) -> bytes:
        """The exact bytes Commerce Layer would POST for `topic` on `order` to `hook`."""
        renderer = self.renderer("")
        if topic.endswith(".destroy"):
            doc = renderer.destroy_document("orders", order.id)
        else:
            tree: IncludeTree = parse_include(hook.include_resources, "orders")
            doc = renderer.document("orders", order, tree)
        return compact(doc)

    def fire(self, topic: str, order: Order) -> Event:
        """Queue `topic` on `order` for every webhook of that topic (the caller holds the lock)."""
        return self._fire(topic, order.id, "orders", lambda hook: self.webhook_body(order, hook, topic))

    def fire_customer(self, topic: str, customer: Customer) -> Event:
        """Queue a `customers.*` topic on `customer` for every webhook of that topic (the caller
        holds the lock); the body is the customer with the webhook's `include_resources`."""
        return self._fire(topic, customer.id, "customers", lambda hook: self._customer_body(customer, hook))

    def _customer_body(self, customer: Customer, hook: Webhook) -> bytes:
        tree = parse_include(hook.include_resources, "customers")
        return compact(self.renderer("").document("customers", customer, tree))

    def _fire(self, topic: str, resource_id: str, resource_type: str, body: Callable[[Webhook], bytes]) -> Event:
        """A new event of `topic` on one resource, and one delivery of `body(hook)` per webhook."""
        state = self.state
        hooks = state.webhooks_for(topic)
        event = Event(state.ids.new(), topic, resource_id, self.now_ms(), [h.id for h in hooks], resource_type)
        state.events[event.id] = event
        for hook in hooks:
            self.sender.enqueue(Delivery(event.id, hook.id, topic, body(hook)))
        self.stats.count("events.triggered")
        self.stats.count("events.deliveries_queued", len(hooks))
        return event

    def trigger_customers(self, topic: str, customer_ids: Iterable[str], *, transition: bool = False) -> list[Event]:
        """Fire a `customers.anonymization_*` topic for each customer; with `transition`, first move
        the customer's anonymization request as the topic announces it (`anonymization.py`)."""
        if topic not in anonymization.TOPICS:
            raise SandboxError("topic", f"{topic!r} is not one of {', '.join(anonymization.TOPICS)}")
        with self.state.lock:
            customers = [self.state.customer(i) for i in customer_ids]
            if transition:
                for customer in customers:
                    anonymization.transition(self.state, customer, topic, self.now_ms())
            return [self.fire_customer(topic, c) for c in customers]

    def trigger_event(self, event_id: str) -> Event:
        """`_trigger`: send an existing event again to the webhooks of its topic, through the
        sender (signed, retried), with the order rendered as it is now (`events.py`)."""
        state = self.state
        with state.lock:
            event = state.events.get(event_id)
            if event is None:
                raise not_found("events", event_id)
            order = state.orders.get(event.order_id) if event.resource_type == "orders" else None
            hooks = state.webhooks_for(event.topic)
            for hook in hooks:
                if event.resource_type == "customers":
                    body = self._customer_body(state.customer(event.order_id), hook)
                elif order is not None:
                    body = self.webhook_body(order, hook, event.topic)
                else:  # destroyed since: only the id, as a destroy body
                    body = compact(self.renderer("").destroy_document("orders", event.order_id))
                self.sender.enqueue(Delivery(event.id, hook.id, event.topic, body))
            event.triggered += 1
            event.updated_at = self.now_ms()
        self.stats.count("events.retriggered")
        self.stats.count("events.deliveries_queued", len(hooks))
        return event

    def trigger(self, topic: str, order_ids: Iterable[str], *, transition: bool = False) -> list[Event]:
        """Fire `topic` for each order (every time: Commerce Layer resends regardless of
        uniqueness). With `transition`, first move the order as the topic implies
        (`orders.place` -> placed with placed_at; `orders.destroy` deletes it after sending)."""
        if topic not in ORDER_TOPICS:
            raise SandboxError("topic", f"{topic!r} is not one of {', '.join(ORDER_TOPICS)}")
        with self.state.lock:
            orders = [self.state.order(i) for i in order_ids]
            events = []
            for order in orders:
                if transition:
                    apply_transition(order, topic, self.now_ms())
                events.append(self.fire(topic, order))
                if transition and topic == "orders.destroy":
                    self.state.orders.pop(order.id, None)
            return events


def _one_organization(scenario: Any) -> None:
    """Refuse what is not one organization's scenario (a scenario with `organizations` is loaded
    at start, `organizations.py`)."""
    if not isinstance(scenario, Mapping):
        raise SandboxError("", "a scenario is an object")
    if "organizations" in scenario:
        raise SandboxError(
            "organizations",
            "a scenario with organizations is loaded when the sandbox starts (--seed); "
            "here load one organization's scenario at /_org/<slug>/_sandbox/scenario",
        )


def summarize(state: SandboxState, loaded: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What `state` holds: counts, client ids, webhooks (with their secrets: for tests and tools)."""
    with state.lock:
        out: dict[str, Any] = {
            "markets": len(state.markets),
            "customers": len(state.customers),
            "orders": len(state.orders),
            "customer_payment_sources": len(state.wallet),
            "clients": sorted(state.clients),
            "webhooks": [
                {
                    "id": w.id,
                    "topic": w.topic,
                    "callback_url": w.callback_url,
                    "shared_secret": w.shared_secret,
                }
                for w in state.webhooks.values()
            ],
        }
    if loaded is not None:
        out["loaded"] = dict(loaded)
    return out


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated with `changes`, nested mappings (`sender`) merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
