"""The sandbox driven by Commerce Layer's official JavaScript SDK, as an integration would.

A real client nobody here wrote: `@commercelayer/js-auth` gets the token, `@commercelayer/sdk`
calls the API, `@commercelayer/sdk-utils` checks webhook signatures (versions pinned in
tests/js/package-lock.json). The SDK only speaks https to `<organization slug>.<domain>` (and
js-auth to `auth.<domain>`), so nginx with a certificate made here by openssl fronts the sandbox
on a free loopback port, passing X-Forwarded-Proto/Host; node trusts the certificate through
NODE_EXTRA_CA_CERTS and resolves `*.sandbox.test` to 127.0.0.1 through a `dns.lookup` preload
(tests/js/resolve-sandbox.cjs, which says why). The domain handed to the SDK carries the port.

tests/js/sdk-checks.mjs runs every check once (module fixture) and prints one JSON line each; each
test below asserts one check's values. Needs node >= 20 with `npm ci` done in tests/js, nginx and
openssl: without them the tests skip with the reason, and fail under CI (`CI` set), which
provides them (.ci/run).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from support.procs import free_port, private_nginx_conf
from support.sandbox import running

pytestmark = pytest.mark.e2e

JS = Path(__file__).parent / "js"
DOMAIN_NAME = "sandbox.test"  # .test is reserved (RFC 2606): it never resolves anywhere else
PACKAGES = ("@commercelayer/sdk", "@commercelayer/js-auth", "@commercelayer/sdk-utils")

CLIENT_ID = "js-sdk-client"
CLIENT_SECRET = "js-sdk-client-secret-0123456789"
SEEDED_HOOK_SECRET = "js-sdk-seeded-hook-secret-abcdef"

CUSTOMER, OTHER_CUSTOMER = "CustAliceJs", "CustBobJsAa"
SAVE_ORDER, REUSE_ORDER, DRAFT_ORDER, OTHER_ORDER = "OrdSaveJsA", "OrdReuseJs", "OrdDraftJs", "OrdBobJsAa"
SAVE_SOURCE, REUSE_SOURCE = "PsSaveJsAa", "PsReuseJsA"
OLD_ENTRY, OTHER_ENTRY = "WalletAlJs", "WalletBoJs"
MARKET = "MarketJsEu"
SHORT_TTL = 2
# When the token is no JWT with organization.slug, the client_from_token check fails and the other
# checks go on with this organization given explicitly, so each reports on its own feature.
FALLBACK_ORGANIZATION = "fallback-org"


def scenario(hook_port: int) -> dict[str, Any]:
    def order(ident: str, minute: int, source: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
        out = {
            "id": ident,
            "customer": "alice@example.com",
            "market": "eu",
            "created_at": f"2026-06-01T10:{minute:02d}:00Z",
            **more,
        }
        if source:
            out["payment_source"] = {"type": "stripe_payments", **source}
        return out

    return {
        # generous limits: rate limiting is not what this test is about
        "sandbox": {
            "token_ttl": 7200,
            "api_limits": ["1000/60"],
            "endpoint_limits": ["200/10"],
            # one failed delivery opens a webhook's circuit (webhook_reset_circuit)
            "sender": {"max_retries": 0, "circuit_threshold": 1},
        },
        "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": "market:all"}],
        "markets": [{"id": MARKET, "code": "eu", "name": "Europe"}],
        "customers": [
            {"id": CUSTOMER, "email": "alice@example.com", "status": "repeat"},
            {"id": OTHER_CUSTOMER, "email": "bob@example.com"},
        ],
        "orders": [
            order(
                SAVE_ORDER,
                0,
                {"id": SAVE_SOURCE, "card_last4": "4242"},
                line_items=[
                    {
                        "id": "LiMugJsAaa",
                        "sku_code": "EMUG12OZFFFFFF000000XXXX",
                        "quantity": 2,
                        "unit_amount_cents": 1500,
                    },
                    {
                        "id": "LiApronJsA",
                        "sku_code": "APRONXXXFFFFFF000000XXXX",
                        "quantity": 1,
                        "unit_amount_cents": 2000,
                    },
                ],
            ),
            order(REUSE_ORDER, 5, {"id": REUSE_SOURCE, "card_last4": "5555"}),
            order(DRAFT_ORDER, 10, {"card_last4": "0341"}, status="draft"),
            {**order(OTHER_ORDER, 15, {"card_last4": "1881"}), "customer": "bob@example.com"},
        ],
        "customer_payment_sources": [
            {
                "id": OLD_ENTRY,
                "customer": "alice@example.com",
                "payment_source_type": "stripe_payments",
                "card_last4": "0077",
                "created_at": "2026-05-01T09:00:00Z",
            },
            {
                "id": OTHER_ENTRY,
                "customer": "bob@example.com",
                "payment_source_type": "stripe_payments",
                "card_last4": "1111",
                "created_at": "2026-05-01T09:00:00Z",
            },
        ],
        "webhooks": [
            {
                "id": "HookSeedJs",
                "topic": "orders.place",
                "callback_url": f"http://127.0.0.1:{hook_port}/hooks/seeded",
                "include_resources": ["customer", "payment_source"],
                "shared_secret": SEEDED_HOOK_SECRET,
            }
        ],
    }


# -- what the test needs ------------------------------------------------------------------------


def _missing(message: str) -> None:
    """The repository's rule (tests/conftest.py, tests/support/deploy_tools.py): skip, but fail under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it", pytrace=False)
    pytest.skip(message)


def _tools() -> dict[str, str]:
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed (Node.js 20 or newer)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        _missing(f"node {version} is too old (the SDK needs Node.js 20 or newer)")
    for package in PACKAGES:
        if not (JS / "node_modules" / package / "package.json").exists():
            _missing("the SDK's npm packages are not installed: run `npm ci` in tests/js")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        _missing("nginx is not installed (apt-get install nginx)")
    openssl = shutil.which("openssl")
    if openssl is None:
        _missing("openssl is not installed (apt-get install openssl)")
    return {"node": node, "nginx": nginx, "openssl": openssl}


def make_certificate(openssl: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for sandbox.test and *.sandbox.test, valid for a day."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            f"/CN={DOMAIN_NAME}",
            "-addext",
            f"subjectAltName=DNS:{DOMAIN_NAME},DNS:*.{DOMAIN_NAME}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def nginx_conf(prefix: Path, listen: int, upstream: int, cert: Path, key: Path) -> Path:
    """TLS in front of the sandbox: Host stays the upstream's, so only X-Forwarded-* tell the
    sandbox how it was reached (its links must follow them)."""
    return private_nginx_conf(
        prefix,
        f"""  server {{
    listen 127.0.0.1:{listen} ssl;
    server_name .{DOMAIN_NAME};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 15s;
    }}
  }}
""",
    )


@contextlib.contextmanager
def _tls_front(nginx: str, prefix: Path, tls_port: int, upstream: int, cert: Path, key: Path) -> Iterator[None]:
    """nginx as the SDK's TLS front on `tls_port`, to the sandbox on `upstream`, until the block ends."""
    prefix.mkdir()
    prefix.chmod(0o755)
    conf = nginx_conf(prefix, tls_port, upstream, cert, key)
    proc = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        _wait_port(tls_port, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nginx did not listen on {port} within {timeout} s")


# -- one run of every check -------------------------------------------------------------------


@dataclass
class Run:
    port: int  # nginx's
    results: dict[str, dict[str, Any]]
    stderr: str
    requests: list[dict[str, Any]] = field(default_factory=list)  # the sandbox's request log

    @property
    def domain(self) -> str:
        return f"{DOMAIN_NAME}:{self.port}"

    def ok(self, name: str) -> dict[str, Any]:
        """The check's values; fails the test with the SDK's error when the check threw."""
        if name not in self.results:
            pytest.fail(f"sdk-checks.mjs printed no {name!r} result; its stderr ends:\n{self.stderr[-2000:]}")
        result = self.results[name]
        if not result["ok"]:
            pytest.fail(f"{name}: the SDK failed: {json.dumps(result['error'])}", pytrace=False)
        return result

    def api_error(self, name: str) -> dict[str, Any]:
        """The ApiError a check expected (fails if the call succeeded or failed otherwise)."""
        result = self.ok(name)
        assert result["thrown"], f"{name}: the call succeeded (got {result['value']!r})"
        error = result["error"]
        assert error["name"] == "ApiError" and error["isApiError"] and error["clientIsApiError"], error
        assert error["type"] == "response", error
        return error

    @property
    def slug(self) -> str:
        """The organization slug the SDK's client used (from the token, else the fallback)."""
        if self.results.get("client_from_token", {}).get("ok"):
            return self.results["client_from_token"]["currentOrganization"]
        return FALLBACK_ORGANIZATION


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tools = _tools()
    tmp = tmp_path_factory.mktemp("js-sdk")
    cert, key = make_certificate(tools["openssl"], tmp)
    hook_port, tls_port = free_port(), free_port()
    with (
        running(scenario(hook_port)) as server,
        _tls_front(tools["nginx"], tmp / "nginx", tls_port, server.port, cert, key),
    ):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp),
            "NODE_EXTRA_CA_CERTS": str(cert),
            "CL_DOMAIN": f"{DOMAIN_NAME}:{tls_port}",
            "CL_CLIENT_ID": CLIENT_ID,
            "CL_CLIENT_SECRET": CLIENT_SECRET,
            "SANDBOX_CONTROL_URL": f"{server.url}/_sandbox",
            "HOOK_PORT": str(hook_port),
            "SEEDED_HOOK_SECRET": SEEDED_HOOK_SECRET,
            "CL_FALLBACK_ORGANIZATION": FALLBACK_ORGANIZATION,
            "SCENARIO": json.dumps(
                {
                    "customer": CUSTOMER,
                    "save_order": SAVE_ORDER,
                    "reuse_order": REUSE_ORDER,
                    "draft_order": DRAFT_ORDER,
                    "missing_order": "NoSuchOrdr",
                    "other_wallet_entry": OTHER_ENTRY,
                    "short_ttl": SHORT_TTL,
                }
            ),
        }
        done = subprocess.run(
            [tools["node"], "--require", "./resolve-sandbox.cjs", "sdk-checks.mjs"],
            cwd=JS,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        results: dict[str, dict[str, Any]] = {}
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                results[record["check"]] = record
        if done.returncode != 0 and not results:
            pytest.fail(f"node exited with {done.returncode}:\n{done.stderr[-3000:]}")
        run = Run(tls_port, results, done.stderr)
        run.requests = requests.get(f"{server.url}/_sandbox/requests", timeout=10).json()["requests"]
        yield run


# -- token and client -------------------------------------------------------------------------


def test_token_is_a_commerce_layer_jwt(sdk: Run) -> None:
    r = sdk.ok("token")
    assert "errors" not in r, r.get("errors")
    assert r["tokenType"] == "bearer"
    assert r["expiresIn"] == 7200 and r["expiresIsDate"]
    assert r["scope"] == "market:all"
    p = r["payload"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", p["organization"]["slug"]), p
    assert isinstance(p["organization"]["id"], str) and p["organization"]["id"], p
    assert p["application"]["kind"] == "integration", p
    assert isinstance(p["application"]["id"], str) and p["application"]["id"], p
    assert p["scope"] == "market:all" and p["test"] is True, p
    assert p["exp"] - p["iat"] == 7200, p
    assert abs(p["iat"] - time.time()) < 120, p


def test_wrong_secret_gets_errors_not_a_token(sdk: Run) -> None:
    r = sdk.ok("token_refused")
    assert r["accessToken"] is None
    assert r["errors"] and str(r["errors"][0]["status"]) == "401", r


def test_client_from_the_token_alone(sdk: Run) -> None:
    r = sdk.ok("client_from_token")
    assert r["currentOrganization"] == sdk.ok("token")["payload"]["organization"]["slug"]


def test_every_call_went_through_the_tls_front(sdk: Run) -> None:
    seen = sdk.requests
    routes = {r["route"] for r in seen}
    assert {
        "token",
        "orders.list",
        "orders.get",
        "orders.patch",
        "customer_payment_sources",
        "webhooks.create",
        "webhooks.get",
        "webhooks.patch",
    } <= routes, routes
    for r in seen:
        headers = {k.lower(): v for k, v in r["headers"].items()}
        host = f"auth.{sdk.domain}" if r["route"] == "token" else f"{sdk.slug}.{sdk.domain}"
        assert headers.get("x-forwarded-proto") == "https", r
        assert headers.get("x-forwarded-host") == host, r


# -- orders ---------------------------------------------------------------------------------------


def test_orders_list_filtered_sorted_paged_with_include(sdk: Run) -> None:
    r = sdk.ok("orders_list")
    assert r["ids"] == [SAVE_ORDER, REUSE_ORDER]
    assert (r["recordCount"], r["pageCount"], r["hasNextPage"]) == (3, 2, True)
    assert r["customerEmails"] == ["alice@example.com", "alice@example.com"]
    assert r["allIds"] == [SAVE_ORDER, REUSE_ORDER, DRAFT_ORDER]


def test_order_retrieve_with_includes_and_a_dotted_path(sdk: Run) -> None:
    r = sdk.ok("orders_retrieve_include")
    assert r["id"] == SAVE_ORDER and r["status"] == "placed"
    assert r["customer"] == {"id": CUSTOMER, "email": "alice@example.com"}
    assert r["market"] == {"id": MARKET, "code": "eu"}
    assert r["lineItems"] == [
        {"id": "LiMugJsAaa", "sku_code": "EMUG12OZFFFFFF000000XXXX", "quantity": 2},
        {"id": "LiApronJsA", "sku_code": "APRONXXXFFFFFF000000XXXX", "quantity": 1},
    ]
    assert r["paymentSource"] == {"id": SAVE_SOURCE, "type": "stripe_payments"}
    # available_customer_payment_sources.payment_source: the wallet entry and, through it, its
    # payment source resolved from `included` (attributes, not a bare {id, type} linkage)
    assert len(r["wallet"]) == 1, r["wallet"]
    entry = r["wallet"][0]
    assert entry["id"] == OLD_ENTRY and entry["name"] == "XXXX-XXXX-XXXX-0077"
    assert entry["paymentSource"]["type"] == "stripe_payments" and entry["paymentSource"]["attributes"], entry
    assert entry["last4"] == "0077"
    assert r["notIncluded"] == {"shipments": True, "payment_method": True}


def test_document_links_follow_the_forwarded_host_and_meta_has_a_trace_id(sdk: Run) -> None:
    r = sdk.ok("document_shape")
    base = f"https://{sdk.slug}.{sdk.domain}/api"
    assert r["selfLink"] == f"{base}/orders/{SAVE_ORDER}"
    assert r["customerRelatedLink"] == f"{base}/orders/{SAVE_ORDER}/customer"
    assert (
        isinstance(r["topMeta"], dict) and isinstance(r["topMeta"].get("trace_id"), str) and r["topMeta"]["trace_id"]
    ), r
    # linkage only for what was included
    assert r["customerLinkage"] == {"id": CUSTOMER, "type": "customers"}
    assert r["marketHasData"] is False and r["lineItemsHasData"] is False
    assert r["includedTypes"] == ["customers"]
    assert r["contentType"].startswith("application/vnd.api+json")


def test_related_available_customer_payment_sources(sdk: Run) -> None:
    r = sdk.ok("related_available_customer_payment_sources")
    assert r["ids"] == [OLD_ENTRY] and r["recordCount"] == 1
    assert r["paymentSources"][0]["type"] == "stripe_payments" and r["paymentSources"][0]["attributes"]


def test_related_customer(sdk: Run) -> None:
    assert sdk.ok("related_customer") == {
        "check": "related_customer",
        "ok": True,
        "id": CUSTOMER,
        "type": "customers",
        "email": "alice@example.com",
    }


def test_related_market(sdk: Run) -> None:
    assert sdk.ok("related_market") == {
        "check": "related_market",
        "ok": True,
        "id": MARKET,
        "type": "markets",
        "code": "eu",
    }


def test_related_line_items(sdk: Run) -> None:
    r = sdk.ok("related_line_items")
    assert r["ids"] == ["LiMugJsAaa", "LiApronJsA"] and r["recordCount"] == 2
    assert r["skuCodes"] == ["EMUG12OZFFFFFF000000XXXX", "APRONXXXFFFFFF000000XXXX"]


def test_customer_payment_sources_of_a_customer(sdk: Run) -> None:
    r = sdk.ok("customer_payment_sources")
    assert r["ids"] == [OLD_ENTRY] and r["recordCount"] == 1


# -- wallet ---------------------------------------------------------------------------------------


def test_wallet_save(sdk: Run) -> None:
    r = sdk.ok("wallet_save")
    assert r["before"] == [OLD_ENTRY]
    assert len(r["added"]) == 1, r
    added = r["added"][0]
    assert r["after"] == [OLD_ENTRY, added["id"]]
    assert added["name"] == "XXXX-XXXX-XXXX-4242"
    assert added["paymentSource"] == {"id": SAVE_SOURCE, "type": "stripe_payments", "attributes": True}
    assert r["orderPaymentSource"] == SAVE_SOURCE
    assert r["orderWallet"] == [OLD_ENTRY, added["id"]]


def test_wallet_reuse_on_another_order_of_the_customer(sdk: Run) -> None:
    r = sdk.ok("wallet_reuse")
    assert r["entry"] == sdk.ok("wallet_save")["added"][0]["id"]
    assert r["saved"]["id"] == SAVE_SOURCE and r["saved"]["last4"] == "4242" and r["saved"]["paymentMethodId"], r
    assert r["before"]["id"] == REUSE_SOURCE and r["before"]["last4"] == "5555", r
    # The order now pays with the saved card: its payment source is the wallet entry's (the same
    # record, or a copy made for this order: Commerce Layer's docs do not say which).
    for seen in (r["answer"], r["reread"]):
        assert seen["id"] != REUSE_SOURCE and seen["type"] == "stripe_payments", r
        assert (seen["last4"], seen["paymentMethodId"]) == ("4242", r["saved"]["paymentMethodId"]), r
    assert r["answer"]["id"] == r["reread"]["id"]


# -- errors ---------------------------------------------------------------------------------------


def test_missing_order_is_an_api_error_404(sdk: Run) -> None:
    e = sdk.api_error("error_not_found")
    assert e["status"] == 404 and e["code"] == "404"
    assert e["errors"][0]["code"] == "RECORD_NOT_FOUND" and e["errors"][0]["status"] == "404"


def test_invalid_include_is_an_api_error_400(sdk: Run) -> None:
    e = sdk.api_error("error_invalid_include")
    assert e["status"] == 400 and e["code"] == "400"
    assert e["errors"][0]["code"] == "INVALID_INCLUDE"


def test_another_customers_wallet_entry_is_an_api_error_422(sdk: Run) -> None:
    e = sdk.api_error("error_validation")
    assert e["status"] == 422 and e["code"] == "422"
    assert e["errors"][0]["code"] == "VALIDATION_ERROR"
    assert e["errors"][0]["source"]["pointer"] == "/data/attributes/_customer_payment_source_id"


# -- webhooks ---------------------------------------------------------------------------------------


def test_webhook_create(sdk: Run) -> None:
    r = sdk.ok("webhook_create")
    assert r["id"] and r["topic"] == "orders.place"
    assert r["callbackUrl"].endswith("/hooks/created")
    assert r["includeResources"] == ["customer", "line_items"]
    assert (r["circuitState"], r["circuitFailureCount"]) == ("closed", 0)
    assert r["sharedSecretLength"] and r["sharedSecretLength"] >= 16


@pytest.mark.parametrize("hook", ["seeded", "created"])
def test_webhook_signatures_checked_by_sdk_utils(sdk: Run, hook: str) -> None:
    r = sdk.ok("webhook_deliveries")
    assert r["placedStatus"] == "placed"
    d = r[hook]
    assert d["topicHeader"] == "orders.place" and d["contentType"].startswith("application/json")
    assert d["valid"] == {"ok": True, "topic": "orders.place", "message": "Signature successfully checked"}
    assert d["signatureOnly"] is True
    assert d["tamperedBodyChanged"] is True and d["tampered"] is False
    assert d["wrongSecret"] is False
    assert d["parsed"] == {"id": DRAFT_ORDER, "status": "placed", "customerEmail": "alice@example.com"}


def test_webhook_reset_circuit(sdk: Run) -> None:
    r = sdk.ok("webhook_reset_circuit")
    assert r["open"] == {"state": "open", "failures": 1}
    assert r["answer"] == {"state": "closed", "failures": 0}
    assert r["reread"] == {"state": "closed", "failures": 0}


# -- token expiry ---------------------------------------------------------------------------------


def test_token_expiry_401_then_the_sdk_refreshes(sdk: Run) -> None:
    r = sdk.ok("token_expiry")
    assert r["expiresIn"] == SHORT_TTL and r["lifetime"] == SHORT_TTL
    assert r["fresh"] == SAVE_ORDER
    assert r["isTokenExpired"] == {"before": False, "after": True}  # the SDK reads the JWT's exp
    e = r["expired"]
    assert e["thrown"], r
    assert e["error"]["name"] == "ApiError" and e["error"]["status"] == 401, e
    assert e["error"]["errors"][0]["code"] == "INVALID_TOKEN", e
    # the SDK saw the 401 INVALID_TOKEN, read `exp`, called refreshToken once and retried
    assert (r["refreshed"], r["refreshCalls"], r["refreshedWithOld"], r["tokenReplaced"]) == (SAVE_ORDER, 1, True, True)


# -- two organizations --------------------------------------------------------------------------

TWO_ORGANIZATIONS = {
    slug: {
        "clients": [{"client_id": f"js-{slug}-client", "client_secret": f"js-{slug}-client-secret-0123456789"}],
        "markets": [{"id": f"Mkt{slug.title()}Js", "code": "eu", "name": "Europe"}],
        "customers": [{"id": f"Cust{slug.title()}Js", "email": f"buyer@{slug}.example"}],
        "orders": [
            {
                "id": f"Ord{slug.title()}Js{n}",
                "customer": f"buyer@{slug}.example",
                "market": "eu",
                "created_at": f"2026-06-01T10:0{n}:00Z",
                "payment_source": {"type": "stripe_payments", "card_last4": f"424{n}"},
            }
            for n in range(count)
        ],
    }
    for slug, count in (("acme", 3), ("initech", 2))
}


def test_the_sdk_sees_each_organizations_own_orders(tmp_path: Path) -> None:
    """Agency mode's sandbox through the SDK: each organization's token (from
    `/_org/<slug>/oauth/token`) makes a client that reaches `https://<slug>.<domain>` through the TLS
    front and lists that organization's orders only."""
    tools = _tools()
    cert, key = make_certificate(tools["openssl"], tmp_path)
    tls_port = free_port()
    scenario = {"sandbox": {"domain": DOMAIN_NAME}, "organizations": TWO_ORGANIZATIONS}
    with running(scenario) as server:
        tokens = {}
        for slug, org in TWO_ORGANIZATIONS.items():
            r = requests.post(
                f"{server.url}/_org/{slug}/oauth/token",
                json={"grant_type": "client_credentials", **org["clients"][0]},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            tokens[slug] = r.json()["access_token"]
        with _tls_front(tools["nginx"], tmp_path / "nginx", tls_port, server.port, cert, key):
            done = subprocess.run(
                [tools["node"], "--require", "./resolve-sandbox.cjs", "sdk-organizations.mjs"],
                cwd=JS,
                env={
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "HOME": str(tmp_path),
                    "NODE_EXTRA_CA_CERTS": str(cert),
                    "CL_DOMAIN": f"{DOMAIN_NAME}:{tls_port}",
                    "CL_TOKENS": json.dumps(tokens),
                },
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            seen = requests.get(f"{server.url}/_org/initech/_sandbox/requests", timeout=10).json()["requests"]
    results = {r["slug"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(results) == set(TWO_ORGANIZATIONS), done.stderr[-2000:]
    for slug, org in TWO_ORGANIZATIONS.items():
        r = results[slug]
        assert r["ok"], r
        assert r["currentOrganization"] == slug
        assert r["ids"] == [o["id"] for o in org["orders"]]
    # initech's calls reached initech, by the host name the SDK built, through the TLS front
    listed = [r for r in seen if r["route"] == "orders.list"]
    assert listed and {r["token"]["organization"] for r in listed} == {"initech"}
    assert {{k.lower(): v for k, v in r["headers"].items()}["x-forwarded-host"] for r in listed} == {
        f"initech.{DOMAIN_NAME}:{tls_port}"
    }
