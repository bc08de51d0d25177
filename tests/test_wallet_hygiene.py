"""`webhook-app wallet duplicates` against the sandbox over HTTP, run as the real command.

The sandbox seeds duplicate wallet entries (several entries naming one order) and a returning
customer's same card saved from several orders (several records, one Stripe fingerprint).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from support import base_env, pg_schema_url, require_postgres
from support.sandbox import running

from webhook_app.store import Store
from webhook_app.store.sqlite import SQLiteStore

CLIENT = {"client_id": "hygiene-client", "client_secret": "hygiene-client-secret-0123456789"}
CARD = {"card_last4": "4242", "card_exp_month": 4, "card_exp_year": 2031}


def order(oid: str, email: str, ptype: str = "stripe_payments", **source) -> dict:
    return {"id": oid, "customer": email, "payment_source": {"type": ptype, **source}}


def scenario() -> dict:
    fillers = [f"filler{n:02d}@example.com" for n in range(30)]  # more than one page of entries
    return {
        "clients": [CLIENT],
        "markets": [{"code": "eu"}],
        "customers": [
            {"id": "CustCaroAa", "email": "carol@example.com"},
            {"id": "CustDaveAa", "email": "dave@example.com"},
            {"id": "CustErinAa", "email": "erin@example.com"},
        ]
        + [{"email": e} for e in fillers],
        "orders": [
            order("OrdCaro001", "carol@example.com", **CARD),
            order("OrdCaro002", "carol@example.com", **CARD),  # same card, another record
            order("OrdDave001", "dave@example.com", **CARD),
            order("OrdDave002", "dave@example.com", card_last4="1881", card_exp_month=9, card_exp_year=2030),
            order("OrdErin001", "erin@example.com", "adyen_payments"),
        ],
        "customer_payment_sources": [
            {
                "id": "WalCaroOld",
                "customer": "carol@example.com",
                "order": "OrdCaro001",
                "created_at": "2026-01-01T00:00:00Z",
            },
            {
                "id": "WalCaroDup",
                "customer": "carol@example.com",
                "order": "OrdCaro001",
                "created_at": "2026-02-01T00:00:00Z",
            },
            {
                "id": "WalCaroNew",
                "customer": "carol@example.com",
                "order": "OrdCaro002",
                "created_at": "2026-03-01T00:00:00Z",
            },
            {
                "id": "WalDaveOne",
                "customer": "dave@example.com",
                "order": "OrdDave001",
                "created_at": "2026-01-01T00:00:00Z",
            },
            {
                "id": "WalDaveTwo",
                "customer": "dave@example.com",
                "order": "OrdDave002",
                "created_at": "2026-01-02T00:00:00Z",
            },
            {
                "id": "WalErinOne",
                "customer": "erin@example.com",
                "order": "OrdErin001",
                "created_at": "2025-06-01T00:00:00Z",
            },
            {
                "id": "WalErinTwo",
                "customer": "erin@example.com",
                "order": "OrdErin001",
                "created_at": "2025-06-02T00:00:00Z",
            },
        ]
        + [
            {"customer": e, "payment_source_type": "stripe_payments", "card_last4": f"{1000 + n}"}
            for n, e in enumerate(fillers)
        ],
    }


@pytest.fixture
def server() -> Iterator:
    with running(scenario()) as srv:
        yield srv


def run(server, tmp_path, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess:
    env = {
        **base_env(),
        "CL_CLIENT_ID": CLIENT["client_id"],
        "CL_CLIENT_SECRET": CLIENT["client_secret"],
        "CL_API_BASE": server.api_url,
        "CL_AUTH_URL": server.auth_url,
        "WEBHOOK_APP_DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'ops.db'}",
    }
    return subprocess.run(
        [sys.executable, "-m", "webhook_app", *args], capture_output=True, text=True, env=env, timeout=120
    )


def wallet_ids(server) -> set[str]:
    return {w["id"] for w in server.sandbox.state.snapshot()["customer_payment_sources"]}


def test_lists_seeded_duplicates_read_only_paginated(server, tmp_path):
    before = wallet_ids(server)
    r = run(server, tmp_path, "wallet", "duplicates", "--json")
    assert r.returncode == 0, r.stderr
    groups = {g["customer_id"]: g for g in map(json.loads, r.stdout.splitlines())}
    assert set(groups) == {"CustCaroAa", "CustErinAa"}  # dave's two cards are two cards
    assert groups["CustCaroAa"]["keep"] == "WalCaroOld"
    assert sorted(groups["CustCaroAa"]["extra"]) == ["WalCaroDup", "WalCaroNew"]
    assert "card_fingerprint" in groups["CustCaroAa"]["matched_by"]
    assert groups["CustErinAa"] == {**groups["CustErinAa"], "keep": "WalErinOne", "extra": ["WalErinTwo"]}
    assert "37 wallet entries of 33 customers read; 2 customers with duplicates, 2 cards, 3 extra entries" in r.stderr
    assert "2/2 pages" in r.stderr  # the progress bar's last line
    assert wallet_ids(server) == before
    assert not any(q["method"] == "DELETE" for q in server.sandbox.stats.requests())
    # one customer, and only cards with an entry made since
    one = run(server, tmp_path, "wallet", "duplicates", "--customer", "CustErinAa")
    assert one.returncode == 0 and "customer CustErinAa" in one.stdout and "CustCaroAa" not in one.stdout
    recent = run(server, tmp_path, "wallet", "duplicates", "--since", "2026-01-15T00:00:00Z")
    assert "CustCaroAa" in recent.stdout and "CustErinAa" not in recent.stdout


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request, tmp_path) -> Iterator[tuple[str, Callable[[], Store]]]:
    """The operations log's database, for each backend: (URL, open a store on it)."""
    if request.param == "sqlite":
        path = tmp_path / "ops.db"
        yield f"sqlite:///{path}", lambda: SQLiteStore(str(path))
        return
    require_postgres()
    from webhook_app.store.postgres import PostgresStore

    with pg_schema_url() as url:
        yield url, lambda: PostgresStore(url)


def test_delete_extra_is_a_dry_run_without_yes_then_leaves_one_entry_per_card(server, tmp_path, database):
    url, open_store = database
    assert run(server, tmp_path, "db", "upgrade", database_url=url).returncode == 0
    before = wallet_ids(server)
    dry = run(server, tmp_path, "wallet", "duplicates", "--delete-extra", database_url=url)
    assert dry.returncode == 0 and "dry run: 3 would be deleted (add --yes)" in dry.stderr
    assert wallet_ids(server) == before
    r = run(server, tmp_path, "wallet", "duplicates", "--delete-extra", "--yes", database_url=url)
    assert r.returncode == 0, r.stderr
    assert "3 deleted (recorded as wallet_entry_deleted)" in r.stderr
    assert wallet_ids(server) == before - {"WalCaroDup", "WalCaroNew", "WalErinTwo"}
    again = run(server, tmp_path, "wallet", "duplicates", database_url=url)
    assert again.stdout == "" and "0 customers with duplicates" in again.stderr
    store = open_store()
    try:
        ops = store.list_operations(kind="wallet_entry_deleted")
    finally:
        store.close()
    assert {o.subject for o in ops} == {"WalCaroDup", "WalCaroNew", "WalErinTwo"}
    caro = next(o for o in ops if o.subject == "WalCaroNew")
    assert caro.detail["kept"] == "WalCaroOld" and caro.detail["customer_id"] == "CustCaroAa"


def test_errors_are_one_line_with_exit_2(server, tmp_path):
    r = run(server, tmp_path, "wallet", "duplicates", "--yes")
    assert r.returncode == 2 and r.stderr.strip() == "webhook-app: --yes only confirms --delete-extra"
    server.sandbox.update_config({"api_limits": ["1/60"]})  # Commerce Layer refuses: 429
    r = run(server, tmp_path, "wallet", "duplicates")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("webhook-app: reading the wallets:")
