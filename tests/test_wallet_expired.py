"""`webhook-app wallet expired` against the sandbox over HTTP, run as the real command.

The sandbox renders each entry's payment source (with its card expiry) only where the request's
`include` names it, as Commerce Layer does; a Klarna entry has no card, so its expiry is unknown.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from support import base_env
from support.sandbox import running

from webhook_app.store.sqlite import SQLiteStore

CLIENT = {"client_id": "expired-client", "client_secret": "expired-client-secret-0123456789"}
NOW = datetime.now(UTC)


def entry(wid: str, email: str, month: int, year: int, ptype: str = "stripe_payments") -> dict:
    out = {"id": wid, "customer": email, "payment_source_type": ptype, "card_exp_month": month, "card_exp_year": year}
    if ptype == "stripe_payments":
        out["card_last4"] = f"{sum(map(ord, wid)) % 10000:04d}"
    return out


def scenario() -> dict:
    fillers = [f"filler{n:02d}@example.com" for n in range(28)]  # more than one page of entries
    return {
        "clients": [CLIENT],
        "markets": [{"id": "MktEuropeA", "code": "eu"}],
        "customers": [
            {"id": "CustAnnaAa", "email": "anna@example.com"},
            {"id": "CustBobbAa", "email": "bob@example.com"},
        ]
        + [{"email": e} for e in fillers],
        "customer_payment_sources": [
            entry("WalAnnaOld1", "anna@example.com", 3, 2024),  # expired
            entry("WalAnnaNew1", "anna@example.com", 12, 2040),  # valid
            entry("WalBobbOld1", "bob@example.com", 1, 2025),  # expired
            entry("WalBobbSoon", "bob@example.com", NOW.month, NOW.year),  # valid through this month
            entry("WalBobbKlar", "bob@example.com", 1, 2020, ptype="klarna_payments"),  # no card: unknown
        ]
        + [entry(f"WalFill{n:04d}", e, 6, 2039) for n, e in enumerate(fillers)],
    }


@pytest.fixture
def server() -> Iterator:
    with running(scenario()) as srv:
        yield srv


def run(server, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **base_env(),
        "CL_CLIENT_ID": CLIENT["client_id"],
        "CL_CLIENT_SECRET": CLIENT["client_secret"],
        "CL_API_BASE": server.api_url,
        "CL_AUTH_URL": server.auth_url,
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'ops.db'}",
    }
    return subprocess.run(
        [sys.executable, "-m", "webhook_app", *args], capture_output=True, text=True, env=env, timeout=120
    )


def wallet_ids(server) -> set[str]:
    return {w["id"] for w in server.sandbox.state.snapshot()["customer_payment_sources"]}


def operations(tmp_path, kind: str):
    store = SQLiteStore(str(tmp_path / "ops.db"))
    try:
        return store.list_operations(kind=kind)
    finally:
        store.close()


def test_lists_expired_expiring_and_unknown_read_only_paginated(server, tmp_path):
    assert run(server, tmp_path, "db", "upgrade").returncode == 0
    before = wallet_ids(server)
    r = run(server, tmp_path, "wallet", "expired", "--json", "--within", "40")
    assert r.returncode == 0, r.stderr
    rows = {e["id"]: e for e in map(json.loads, r.stdout.splitlines())}
    assert {k: v["state"] for k, v in rows.items()} == {
        "WalAnnaOld1": "expired",
        "WalBobbOld1": "expired",
        "WalBobbSoon": "expiring",
        "WalBobbKlar": "unknown",
    }
    assert rows["WalAnnaOld1"]["card_expiry"] == "03/2024" and rows["WalAnnaOld1"]["customer_id"] == "CustAnnaAa"
    assert rows["WalAnnaOld1"]["market_id"] == "MktEuropeA"  # through the entry's payment method
    assert rows["WalBobbKlar"]["card_expiry"] is None
    assert "33 wallet entries of 30 customers read" in r.stderr
    assert "2 expired, 1 expiring within 40 days, 1 with an unknown expiry" in r.stderr
    assert "2/2 pages" in r.stderr  # not a terminal: the progress bar's last line only
    # without --within, a card valid through this month is not listed
    plain = run(server, tmp_path, "wallet", "expired", "--customer", "CustBobbAa")
    assert plain.returncode == 0
    assert "WalBobbOld1" in plain.stdout and "WalBobbSoon" not in plain.stdout and "CustAnnaAa" not in plain.stdout
    assert wallet_ids(server) == before
    assert not any(q["method"] == "DELETE" for q in server.sandbox.stats.requests())
    # the entries' payment sources were asked for (an include-less read could not tell)
    listed = [q for q in server.sandbox.stats.requests() if q["route"] == "customer_payment_sources"]
    assert listed and all("payment_source" in q["query"] for q in listed)
    scans = operations(tmp_path, "wallet_expired_scan")
    assert len(scans) == 2 and scans[-1].detail["expired"] == 2
    assert scans[-1].detail["expired_by_market"] == {"MktEuropeA": 2}


def test_delete_is_a_dry_run_without_yes_then_removes_exactly_the_expired_and_logs_each(server, tmp_path):
    assert run(server, tmp_path, "db", "upgrade").returncode == 0
    before = wallet_ids(server)
    dry = run(server, tmp_path, "wallet", "expired", "--delete", "--within", "40")
    assert dry.returncode == 0 and "dry run: 2 would be deleted (add --yes)" in dry.stderr
    assert wallet_ids(server) == before
    r = run(server, tmp_path, "wallet", "expired", "--delete", "--yes", "--within", "40")
    assert r.returncode == 0, r.stderr
    assert "2 deleted (recorded as wallet_entry_deleted)" in r.stderr
    # the expiring and the unknown stay
    assert wallet_ids(server) == before - {"WalAnnaOld1", "WalBobbOld1"}
    ops = operations(tmp_path, "wallet_entry_deleted")
    assert {o.subject for o in ops} == {"WalAnnaOld1", "WalBobbOld1"}
    anna = next(o for o in ops if o.subject == "WalAnnaOld1")
    assert anna.detail["why"] == "card_expired" and anna.detail["card_expiry"] == "03/2024"
    assert anna.detail["customer_id"] == "CustAnnaAa" and anna.detail["market_id"] == "MktEuropeA"
    again = run(server, tmp_path, "wallet", "expired", "--delete", "--yes")
    assert again.returncode == 0 and "0 expired" in again.stderr
    assert len(operations(tmp_path, "wallet_entry_deleted")) == 2


def test_errors_are_one_line_with_exit_2(server, tmp_path):
    r = run(server, tmp_path, "wallet", "expired", "--yes")
    assert r.returncode == 2 and r.stderr.strip() == "webhook-app: --yes only confirms --delete"
    r = run(server, tmp_path, "wallet", "expired", "--within", "-1")
    assert r.returncode == 2 and "--within" in r.stderr
    # the operations log's database is not set up: one line, nothing read
    r = run(server, tmp_path, "wallet", "expired")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert run(server, tmp_path, "db", "upgrade").returncode == 0
    server.sandbox.update_config({"api_limits": ["1/60"]})  # Commerce Layer refuses: 429
    r = run(server, tmp_path, "wallet", "expired")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("webhook-app: reading the wallets:")
