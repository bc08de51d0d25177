"""A recording fake of Commerce Layer's API over real HTTP (loopback), for unit and e2e tests.

It implements the token endpoint and `GET`/`PATCH /api/orders/{id}` with the wallet semantics the
service relies on, shaped as Commerce Layer documents them: relationship linkage only on the
paths `include` names (a wallet entry's `payment_source` only with
`available_customer_payment_sources.payment_source`), gateway tokens on payment sources and wallet
entries, and a payment source record of its own for an order that uses a wallet entry. It records
every request, and can be scripted per route with canned failures
(`fail(route, status=..., times=...)`, `hang(route, seconds)`, `drop(route)`).

Its answers have the shape the sandbox is held to (tests/test_sandbox_contract.py runs the same
contract over both): every attribute and relationship of an order that Commerce Layer renders
(the reference body's names; null unless this fake models the value), relationship links, the
resource's and the answer's `meta` (with a `trace_id` per answer), absolute resource links.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from support import secret_scan
from support.builders import WALLET_TYPES
from support.settings import DATA

JSONAPI = "application/vnd.api+json"
#: the reference order body (Commerce Layer's own example) the sandbox's contract is checked against
_REFERENCE_ORDER = json.loads((DATA / "orders.place.guest-wire-transfer.json").read_text())["data"]
#: an order's attributes and relationships as Commerce Layer renders them: every one, null or not
ORDER_ATTRIBUTES = tuple(_REFERENCE_ORDER["attributes"])
ORDER_RELATIONSHIPS = tuple(_REFERENCE_ORDER["relationships"])
#: a resource's relationships, from the resource model shipped with the service (Commerce Layer's resources.json)
_MODEL = json.loads((DATA.parent.parent / "webhook_app" / "data" / "resources.json").read_text())["resources"]
META = {"mode": "test", "organization_id": "FakeOrgId"}


@dataclass
class Scripted:
    status: int = 500
    times: int = 1
    hang: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    apply_first: bool = False  # make the change, then answer the failure (ambiguous outcome)
    body: dict[str, Any] | None = None


@dataclass
class FakeOrder:
    id: str
    customer_id: str | None
    source_type: str | None
    source_id: str | None
    guest: bool = False
    wallet: list[dict[str, Any]] = field(default_factory=list)
    customer_payment_source_id: str | None = None
    source_token: str | None = None  # the gateway's token (Stripe: the PaymentMethod id)


class FakeCommerceLayer:
    def __init__(
        self, *, client_id: str = "cid", client_secret: str = "csecret-0123456789", token_ttl: int = 7200
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        secret_scan.register(client_secret, source="fakecl client secret")
        self.token_ttl = token_ttl
        self.tokens: dict[str, float] = {}
        self.orders: dict[str, FakeOrder] = {}
        self.requests: list[dict[str, Any]] = []
        self.scripts: dict[str, list[Scripted]] = defaultdict(list)
        self.lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeCommerceLayer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- scripting ---------------------------------------------------------------------------
    def add_order(
        self,
        order_id: str,
        *,
        customer_id: str | None = "cus1",
        source_type: str | None = "stripe_payments",
        source_id: str | None = None,
        guest: bool = False,
    ) -> FakeOrder:
        o = FakeOrder(order_id, customer_id, source_type, source_id or f"ps{order_id}", guest)
        o.source_token = f"pm_{o.source_id}"
        self.orders[order_id] = o
        return o

    def fail(
        self,
        route: str,
        *,
        status: int = 500,
        times: int = 1,
        headers: dict[str, str] | None = None,
        apply_first: bool = False,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.scripts[route].append(Scripted(status, times, 0.0, headers or {}, apply_first, body))

    def hang(self, route: str, seconds: float, *, times: int = 1, apply_first: bool = False) -> None:
        self.scripts[route].append(Scripted(200, times, seconds, {}, apply_first))

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def calls(self, route: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["route"] == route]

    def patches(self) -> list[dict[str, Any]]:
        return [r for r in self.calls("orders.patch") if r["status"] == 200]

    # --- the app -----------------------------------------------------------------------------
    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        req = Request(environ)
        route, order_id = self._route(req)
        record: dict[str, Any] = {
            "method": req.method,
            "path": req.path,
            "route": route,
            "args": dict(req.args),
            "headers": dict(req.headers),
            "json": None,
            "status": None,
            "at": time.time(),
        }
        with self.lock:
            self.requests.append(record)
        if req.data:
            try:
                record["json"] = json.loads(req.data)
            except ValueError:
                record["json"] = None
        resp = self._handle(req, route, order_id, record)
        record["status"] = resp.status_code
        return resp(environ, start_response)

    @staticmethod
    def _route(req: Request) -> tuple[str, str | None]:
        if req.path == "/oauth/token":
            return "token", None
        parts = req.path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["api", "orders"]:
            return ("orders.patch" if req.method == "PATCH" else "orders.get"), parts[2]
        return "other", None

    def _take_script(self, route: str) -> Scripted | None:
        with self.lock:
            queue = self.scripts.get(route)
            if not queue:
                return None
            s = queue[0]
            s.times -= 1
            if s.times <= 0:
                queue.pop(0)
            return s

    def _handle(self, req: Request, route: str, order_id: str | None, record: dict[str, Any]) -> Response:
        script = self._take_script(route)
        if script and script.hang and not script.apply_first:
            time.sleep(script.hang)
        if script and script.status >= 400 and not script.apply_first:
            return _errors(script.status, "Scripted failure", "scripted", headers=script.headers, body=script.body)
        if script and script.status < 400 and script.body is not None:  # a 2xx with a canned (odd) body
            return Response(json.dumps(script.body), script.status, headers=script.headers, content_type=JSONAPI)
        if route == "token":
            resp = self._token(req)
        elif route in ("orders.get", "orders.patch") and order_id is not None:
            resp = self._order(req, route, order_id, record)
        else:
            resp = _errors(404, "Not found", "RECORD_NOT_FOUND")
        if script and script.apply_first and script.hang:
            time.sleep(script.hang)  # applied, then the answer comes too late
        if script and script.apply_first and script.status >= 400:
            return _errors(script.status, "Scripted failure after applying", "scripted", headers=script.headers)
        return resp

    def _token(self, req: Request) -> Response:
        body = req.get_json(silent=True) or {}
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return _errors(401, "Unauthorized", "UNAUTHORIZED")
        token = secrets.token_urlsafe(24)
        secret_scan.register(token, source="fakecl token")  # must never show up in any output
        self.tokens[token] = time.time() + self.token_ttl
        return Response(
            json.dumps(
                {
                    "access_token": token,
                    "token_type": "bearer",
                    "expires_in": self.token_ttl,
                    "scope": body.get("scope", "market:all"),
                    "created_at": int(time.time()),
                }
            ),
            200,
            content_type="application/json",
        )

    def _order(self, req: Request, route: str, order_id: str, record: dict[str, Any]) -> Response:
        auth = req.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self.tokens.get(token, 0) < time.time():
            return _errors(401, "Invalid token", "INVALID_TOKEN")
        if req.headers.get("Accept") != JSONAPI:
            return _errors(406, "Not acceptable", "NOT_ACCEPTABLE")
        order = self.orders.get(order_id)
        if order is None:
            return _errors(404, "Record not found", "RECORD_NOT_FOUND")
        if route == "orders.patch":
            if req.mimetype != JSONAPI:
                return _errors(415, "Unsupported media type", "UNSUPPORTED_MEDIA_TYPE")
            attrs = ((record["json"] or {}).get("data") or {}).get("attributes") or {}
            with self.lock:
                if attrs.get("_save_payment_source_to_customer_wallet"):
                    if order.guest or not order.customer_id or order.source_type not in WALLET_TYPES:
                        return _errors(
                            422, "Unprocessable", "VALIDATION_ERROR", detail="payment source cannot be saved"
                        )
                    # Not idempotent: saving again makes another entry (as Commerce Layer's own
                    # checkout once found, commercelayer/mfe-checkout issues 409 and 412).
                    order.wallet.append(
                        {
                            "id": f"cps{len(order.wallet) + 1}{order.id}"[:20],
                            "source_id": order.source_id,
                            "source_type": order.source_type,
                            "token": order.source_token,
                            "created_at": f"2026-11-26T00:00:{len(order.wallet):02d}.000Z",
                        }
                    )
                if "_customer_payment_source_id" in attrs:
                    wanted = attrs["_customer_payment_source_id"]
                    entry = next((w for w in order.wallet if w["id"] == wanted), None)
                    if entry is None:
                        return _errors(422, "Unprocessable", "VALIDATION_ERROR", detail="unknown wallet entry")
                    # The order gets a payment source record of its own, made from the entry's token.
                    order.customer_payment_source_id = wanted
                    order.source_id, order.source_type = f"ps{order.id}u", entry["source_type"]
                    order.source_token = _token(entry)
        include = set(filter(None, req.args.get("include", "").split(",")))
        doc = self._document(order, include, api=f"{self.url}/api")
        doc["meta"] = {**META, "trace_id": secrets.token_hex(32)}  # Commerce Layer's, on every answer
        return Response(json.dumps(doc), 200, content_type=JSONAPI)

    @staticmethod
    def _document(order: FakeOrder, include: set[str], *, api: str) -> dict[str, Any]:
        rel = _relationships(api, "orders", order.id, ORDER_RELATIONSHIPS)
        included: list[dict[str, Any]] = []
        if "payment_source" in include and order.source_type:
            rel["payment_source"]["data"] = {"type": order.source_type, "id": order.source_id}
            included.append(_source(api, order.source_type, order.source_id, order.source_token))
        if "available_customer_payment_sources" in include:
            rel["available_customer_payment_sources"]["data"] = [
                {"type": "customer_payment_sources", "id": w["id"]} for w in order.wallet
            ]
            linked = "available_customer_payment_sources.payment_source" in include
            for w in order.wallet:
                entry_rel = _relationships(api, "customer_payment_sources", w["id"])
                if linked:
                    entry_rel["payment_source"]["data"] = {"type": w["source_type"], "id": w["source_id"]}
                    included.append(_source(api, w["source_type"], w["source_id"], _token(w)))
                included.append(
                    _resource(
                        api,
                        "customer_payment_sources",
                        w["id"],
                        {
                            "name": "XXXX-XXXX-XXXX-4242",
                            "created_at": w["created_at"],
                            "payment_source_token": _token(w),
                            "customer_token": f"cus_{order.customer_id}",
                        },
                        entry_rel,
                    )
                )
        attributes = dict.fromkeys(ORDER_ATTRIBUTES) | {"guest": order.guest}
        doc: dict[str, Any] = {"data": _resource(api, "orders", order.id, attributes, rel)}
        if included:
            unique = {(r["type"], r["id"]): r for r in included}
            doc["included"] = list(unique.values())
        return doc


def _token(entry: dict[str, Any]) -> str:
    """A wallet entry's gateway token (scripted entries may leave it to the source they came from)."""
    return entry.get("token") or f"pm_{entry['source_id']}"


def _relationships(
    api: str, rtype: str, rid: str | None, names: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """Each relationship's links (its linkage is added where an include asks for it)."""
    if names is None:
        names = tuple(_MODEL.get(rtype, {}).get("relationships", ()))
    base = f"{api}/{rtype}/{rid}"
    return {n: {"links": {"self": f"{base}/relationships/{n}", "related": f"{base}/{n}"}} for n in names}


def _resource(
    api: str, rtype: str, rid: str | None, attributes: dict[str, Any], relationships: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": rid,
        "type": rtype,
        "links": {"self": f"{api}/{rtype}/{rid}"},
        "attributes": attributes,
        "relationships": relationships,
        "meta": dict(META),
    }


def _source(api: str, source_type: str, source_id: str | None, token: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"payment_instrument": {"issuer_type": "card", "card_type": "visa", "last4": "4242"}}
    # Each gateway's own name for the reusable instrument the wallet entry's token comes from.
    if source_type == "stripe_payments":
        attrs["payment_method"] = {"id": token, "card": {"last4": "4242", "brand": "visa"}}
    elif source_type == "braintree_payments":
        attrs["options"] = {"payment_method_token": token}
    elif source_type == "checkout_com_payments":
        attrs["source_id"] = token
    elif source_type == "adyen_payments":
        attrs["payment_response"] = {"additionalData": {"recurring.recurringDetailReference": token}}
    else:
        attrs["payment_source_token"] = token
    return _resource(api, source_type, source_id, attrs, _relationships(api, source_type, source_id))


def _errors(
    status: int,
    title: str,
    code: str,
    *,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Response:
    payload = body or {"errors": [{"title": title, "detail": detail or title, "code": code, "status": str(status)}]}
    return Response(json.dumps(payload), status, headers=headers or {}, content_type=JSONAPI)
