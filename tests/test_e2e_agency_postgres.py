"""Agency mode end to end on PostgreSQL: `webhook-app db upgrade`, then separate `web` and
`worker` processes on a private schema, and one sandbox serving three organizations (acme and
initech in enforce mode, globex in shadow). Each organization's eligible orders are saved in its
own wallets with its own token (the sandbox's request log names the token of every PATCH); the
shadow organization sends nothing. The same setup as tests/test_e2e_agency.py's first phase, which
runs `serve` on SQLite.

Skipped, with the reason, when PostgreSQL is unreachable (a failure under CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support import pg_schema_url, require_postgres
from support.procs import Service, free_port, wait_http, wait_until
from test_e2e_agency import (
    FAST_LIMITS,
    FIRST,
    POLICY,
    SLUGS,
    client,
    order_ids,
    org_scenario,
    organizations_file,
    secret,
)

from webhook_app.policy import load_policy
from webhook_app.store import DeliveryFilter, open_store

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_each_organization_saves_with_its_own_token_on_web_and_worker_with_postgres(tmp_path: Path) -> None:
    require_postgres()
    (tmp_path / "policy.toml").write_text(POLICY)
    includes = sorted(load_policy(tmp_path / "policy.toml").required_includes())
    sb_url, web_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    scenario = {
        "sandbox": {
            **FAST_LIMITS,
            "token_ttl": 3600,
            "sender": {"timeout": 5, "max_retries": 3, "backoff_base": 0.2, "concurrency": 8},
        },
        "organizations": {slug: org_scenario(slug, web_url + "/webhooks/commercelayer", includes) for slug in SLUGS},
    }
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    organizations_file(tmp_path / "organizations.toml", sb_url, SLUGS, shadow=("globex",))

    def control(slug: str, method: str, path: str, body: object = None) -> dict:
        r = requests.request(
            method,
            f"{sb_url}/_org/{slug}/_sandbox{path}",
            json={} if body is None and method != "GET" else body,
            timeout=60,
        )
        assert r.status_code < 300, r.text
        return r.json() if r.content else {}

    with pg_schema_url() as db_url:
        env = {
            "WEBHOOK_APP_ORGANIZATIONS": str(tmp_path / "organizations.toml"),
            "WEBHOOK_APP_POLICY": str(tmp_path / "policy.toml"),
            "WEBHOOK_APP_DATABASE_URL": db_url,
            "WEBHOOK_APP_POLL_INTERVAL": "0.05",
            "WEBHOOK_APP_RETRY_BASE_SECONDS": "0.2",
            "WEBHOOK_APP_RETRY_MAX_SECONDS": "2",
            "CL_RATE_LIMITS": "60/1",
        }
        for slug in SLUGS:
            env[f"{slug.upper()}_WEBHOOK_SECRETS"] = f"main:{secret(slug)}"
            env[f"{slug.upper()}_CL_CLIENT_SECRET"] = client(slug)["client_secret"]
        full = {k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))}
        upgrade = subprocess.run(
            [sys.executable, "-m", "webhook_app", "db", "upgrade"],
            env={**full, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert upgrade.returncode == 0, upgrade.stderr
        procs = [
            Service(
                ["sandbox", "--port", sb_url.rsplit(":", 1)[1], "--seed", str(tmp_path / "scenario.json")],
                {},
                tmp_path / "sb.log",
            )
        ]
        try:
            wait_http(sb_url + "/_sandbox/health", proc=procs[0].proc)
            procs.append(
                Service(["web", "--bind", web_url.removeprefix("http://"), "--workers", "1"], env, tmp_path / "web.log")
            )
            wait_http(web_url + "/readyz", proc=procs[-1].proc, timeout=60)
            procs.append(Service(["worker"], env, tmp_path / "worker.log"))
            for slug in SLUGS:
                control(slug, "POST", "/events", {"topic": "orders.place", "order_ids": order_ids(slug, "A", FIRST)})
            for slug in SLUGS:
                assert control(slug, "POST", "/sender/drain", {"timeout": 60})["drained"]
            store = open_store(db_url)
            try:

                def settled() -> bool:
                    q = store.queue_stats(now=time.time())
                    stored = len(store.list_deliveries(DeliveryFilter(limit=100)))
                    return stored == len(SLUGS) * FIRST and q.pending == 0 and q.running == 0

                wait_until(settled, timeout=90, interval=0.2, what="every delivery stored and its job done")
                for slug in ("acme", "initech"):
                    patches = control(slug, "GET", "/requests?route=orders.patch&method=PATCH")["requests"]
                    assert sorted(p["path"].rsplit("/", 1)[-1] for p in patches) == order_ids(slug, "A", FIRST)
                    assert {(p["token"]["organization"], p["token"]["client_id"]) for p in patches} == {
                        (slug, client(slug)["client_id"])
                    }
                    assert {p["status"] for p in patches} == {200}
                    assert len(control(slug, "GET", "/state")["customer_payment_sources"]) == FIRST
                    mine = store.list_deliveries(DeliveryFilter(organization=slug, limit=100))
                    assert sorted(d.order_id for d in mine) == order_ids(slug, "A", FIRST)
                # shadow: stored and decided under globex, nothing sent
                assert len(store.list_deliveries(DeliveryFilter(organization="globex", limit=100))) == FIRST
                sent = control("globex", "GET", "/requests")["requests"]
                assert {r["method"] for r in sent if r["route"] != "token"} <= {"GET"}
                assert control("globex", "GET", "/state")["customer_payment_sources"] == []
            finally:
                store.close()
        finally:
            for p in reversed(procs):
                p.stop()
