"""`Sandbox`: one emulated Commerce Layer organization and everything around it.

It ties together the records (`state`), configuration, rate limiter, fault rules, counters and
request log, and the webhook sender, and offers the operations both the HTTP layer and tests
use: loading scenarios, resetting, changing configuration, triggering events. It knows no HTTP
itself; `api.create_sandbox_app(sandbox)` serves it and `server.SandboxServer` runs it.
"""

from __future__ import annotations

import copy
import json
import math
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
        if not isinstance(scenario, Mapping):
            raise SandboxError("", "a scenario is an object")
        if "organizations" in scenario:
            raise SandboxError(
                "organizations",
                "a scenario with organizations is loaded when the sandbox starts (--seed); "
                "here load one organization's scenario at /_org/<slug>/_sandbox/scenario",
            )
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
        with self.state.lock:
            out: dict[str, Any] = {
                "markets": len(self.state.markets),
                "customers": len(self.state.customers),
                "orders": len(self.state.orders),
                "customer_payment_sources": len(self.state.wallet),
                "clients": sorted(self.state.clients),
                "webhooks": [
                    {
                        "id": w.id,
                        "topic": w.topic,
                        "callback_url": w.callback_url,
                        "shared_secret": w.shared_secret,
                    }
                    for w in self.state.webhooks.values()
                ],
            }
        if loaded is not None:
            out["loaded"] = dict(loaded)
        return out

    def reset(self, *, reload: bool = True) -> dict[str, Any]:
        """Back to the initial scenario (or empty): its config, no faults, zero stats."""
        if reload and self.initial_scenario is not None:
            return self.load_scenario(self.initial_scenario)
        return self.load_scenario({})

    # -- events --

    # -- tokens --

    def issue_token(self, client: OAuthClient, scope: str) -> Token:
        """A signed JWT carrying what Commerce Layer's tokens carry (see `tokens.py`)."""
        cfg, now = self.config, self.now()
        ttl = cfg.token_ttl
        # `exp` is whole seconds; a sub-second lifetime (tests) expires at its exact time.
        exp = math.ceil(now + ttl) if ttl < 1 else int(now + ttl)
        expires_at = now + ttl if ttl < 1 else float(exp)
        claims: dict[str, Any] = {
            "organization": {
                "id": cfg.organization_id,
                "slug": cfg.organization_slug,
                "enterprise": False,
                "region": "eu-west-1",
            },
            "application": {
                "id": client.application_id or client.client_id[:10],
                "client_id": client.client_id,
                "kind": client.kind,
                "public": client.kind == "sales_channel",
            },
            "scope": scope,
            "exp": exp,
            "test": cfg.mode == "test",
            "rand": self._rand.random(),
            "iat": int(now),
            "iss": f"https://auth.{cfg.domain}",
        }
        market = self._market_claim(scope)
        if market is not None:
            claims["market"] = market
        value = tokens.encode(claims, secret=self.token_secret)
        return self.state.issue_token(client, scope, value=value, now=now, expires_at=expires_at, claims=claims)

    def _market_claim(self, scope: str) -> dict[str, Any] | None:
        ids = []
        with self.state.lock:
            for part in scope.split():
                kind, _, rest = part.partition(":")
                if kind != "market":
                    continue
                how, _, value = rest.partition(":")
                if how == "code" and (m := self.state.market_by_code(value)) is not None:
                    ids.append(m.id)
                elif how == "id" and value in self.state.markets:
                    ids.append(value)
        if not ids:
            return None
        return {
            "id": ids,
            "stock_location_ids": [],
            "geocoder_id": None,
            "allows_external_prices": False,
        }

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
        state = self.state
        hooks = state.webhooks_for(topic)
        event = Event(state.ids.new(), topic, order.id, self.now_ms(), [h.id for h in hooks])
        state.events[event.id] = event
        for hook in hooks:
            self.sender.enqueue(Delivery(event.id, hook.id, topic, self.webhook_body(order, hook, topic)))
        self.stats.count("events.triggered")
        self.stats.count("events.deliveries_queued", len(hooks))
        return event

    def fire_customer(self, topic: str, customer: Customer) -> Event:
        """Queue a `customers.*` topic on `customer` for every webhook of that topic (the caller
        holds the lock); the body is the customer with the webhook's `include_resources`."""
        state = self.state
        hooks = state.webhooks_for(topic)
        event = Event(state.ids.new(), topic, customer.id, self.now_ms(), [h.id for h in hooks], "customers")
        state.events[event.id] = event
        renderer = self.renderer("")
        for hook in hooks:
            doc = renderer.document("customers", customer, parse_include(hook.include_resources, "customers"))
            self.sender.enqueue(Delivery(event.id, hook.id, topic, compact(doc)))
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
                    customer = state.customer(event.order_id)
                    tree = parse_include(hook.include_resources, "customers")
                    body = compact(self.renderer("").document("customers", customer, tree))
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


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated with `changes`, nested mappings (`sender`) merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
