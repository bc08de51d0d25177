"""What the service needs from Commerce Layer, without any transport: a Protocol and call records.

`CommerceLayerAPI` is the seam the worker and the operations depend on; `client.CommerceLayerClient`
is the one implementation (requests, OAuth2, timeouts, rate limits). Nothing here imports requests,
so metrics and the web processes can name a call without pulling in the HTTP client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class CallRecord:
    """What one call did, for metrics and logs (no secrets)."""

    method: str
    route: str
    status: int | None
    seconds: float
    waited: float
    trace_id: str | None = None  # Commerce Layer's `meta.trace_id` of the answer (its support asks for it)


class CommerceLayerAPI(Protocol):
    """The calls this service makes; every one has a timeout and raises CommerceLayerError."""

    def check_credentials(self, *, api: bool = False) -> None:
        """Ask for a token now (with `api`, and use it once): CredentialsRefused if refused."""
        ...

    def get_order(self, order_id: str, *, include: Iterable[str] = ()) -> dict[str, Any]: ...

    def update_order(
        self,
        order_id: str,
        attributes: Mapping[str, Any],
        *,
        include: Iterable[str] = (),
        confirm: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """PATCH the order; `confirm` is asked right before each send (after any wait for a
        rate-limit slot or a new token): False raises NotSent and nothing is sent."""
        ...

    def list_orders(self, *, params: Mapping[str, str], page_size: int = 25) -> Iterator[dict[str, Any]]: ...

    def list_webhooks(self) -> list[dict[str, Any]]: ...

    def list_wallet_pages(
        self, *, customer_id: str | None = None, include: Iterable[str] = (), page_size: int = 25
    ) -> Iterator[dict[str, Any]]:
        """The `customer_payment_sources` list, one JSON:API document (data, included, meta) per page."""
        ...

    def delete_wallet_entry(self, entry_id: str) -> None: ...

    def list_order_events(self, order_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
        """The order's `events` (each `attributes.name` is a topic such as `orders.place`)."""
        ...

    def get_event(self, event_id: str) -> dict[str, Any]: ...

    def trigger_event(self, event_id: str) -> dict[str, Any]:
        """Ask Commerce Layer to send the event to its webhooks again (`_trigger`)."""
        ...

    def create_webhook(
        self, *, topic: str, callback_url: str, include_resources: list[str], name: str | None = None
    ) -> dict[str, Any]: ...

    def reset_webhook_circuit(self, webhook_id: str) -> dict[str, Any]: ...

    def list_event_callbacks(self, webhook_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The webhook's `last_event_callbacks` (at most `limit`), as Commerce Layer lists them."""
        ...

    def close(self) -> None: ...
