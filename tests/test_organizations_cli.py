"""Agency mode's stored-data commands: `forget --org SLUG` and `replay --org SLUG` act on that
organization's rows only (any stored organization, so a removed one's stay reachable); in agency
mode, without `--org`, one line naming the organizations. The real command on a real SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.builders import order_body

from webhook_app.events import Delivery, delivery_identity
from webhook_app.store import DeliveryFilter
from webhook_app.store.sqlite import SQLiteStore

ORGANIZATIONS = """
[organizations.acme]
webhook_secrets_env = "ACME_WEBHOOK_SECRETS"

[organizations.globex]
webhook_secrets_env = "GLOBEX_WEBHOOK_SECRETS"
"""
#: the same customer id in three organizations' deliveries (one of them, hooli, since removed)
CUSTOMER = "cusShared001"
ORDERS = {"acme": "ordAcme0001", "globex": "ordGlobex001", "hooli": "ordHooli0001"}


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    db = tmp_path / "app.db"
    store = SQLiteStore(str(db))
    try:
        store.migrate()
        for slug, order_id in ORDERS.items():
            body = order_body(order_id, customer_id=CUSTOMER)
            store.record_delivery(
                Delivery(
                    topic="orders.place",
                    body=body,
                    identity=delivery_identity("orders.place", body, slug),
                    secret_label="main",
                    resource_type="orders",
                    resource_id=order_id,
                    organization=slug,
                ),
                now=time.time(),
            )
    finally:
        store.close()
    (tmp_path / "organizations.toml").write_text(ORGANIZATIONS)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))},
        "WEBHOOK_APP_ORGANIZATIONS": str(tmp_path / "organizations.toml"),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}",
        "ACME_WEBHOOK_SECRETS": "main:acme-secret-0123456789abcdef",
        "GLOBEX_WEBHOOK_SECRETS": "main:globex-secret-0123456789abcdef",
        "TARGET_SECRET": "target-secret-0123456789abcdef",
    }
    return db, env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "webhook_app", *args], env=env, capture_output=True, text=True, timeout=60
    )


def bodies_left(db: Path) -> dict[str, bool]:
    store = SQLiteStore(str(db))
    try:
        return {d.organization: d.body_removed is None for d in store.list_deliveries(DeliveryFilter(limit=10))}
    finally:
        store.close()


def test_forget_takes_the_organization(stored) -> None:
    db, env = stored
    without = run(env, "forget", "--customer", CUSTOMER)
    assert without.returncode == 2 and without.stderr.count("\n") == 1
    assert "--org: name one of the organizations: acme, globex" in without.stderr
    assert bodies_left(db) == {"acme": True, "globex": True, "hooli": True}

    r = run(env, "forget", "--org", "globex", "--customer", CUSTOMER)
    assert r.returncode == 0, r.stderr
    assert "removed the body and headers of 1 deliveries" in r.stdout
    assert bodies_left(db) == {"acme": True, "globex": False, "hooli": True}
    # an organization removed from the file: its stored rows are still reachable
    gone = run(env, "forget", "--org", "hooli", "--customer", CUSTOMER)
    assert gone.returncode == 0, gone.stderr
    assert bodies_left(db) == {"acme": True, "globex": False, "hooli": False}
    bad = run(env, "forget", "--org", "Not A Slug", "--customer", CUSTOMER)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--org" in bad.stderr


def test_replay_takes_the_organization(stored) -> None:
    _, env = stored
    args = ("replay", "--dry-run", "--target", "http://127.0.0.1:9/webhooks/commercelayer/acme")
    args += ("--secret-env", "TARGET_SECRET")
    without = run(env, *args)
    assert without.returncode == 2 and without.stderr.count("\n") == 1
    assert "--org: name one of the organizations: acme, globex" in without.stderr
    r = run(env, *args, "--org", "acme")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and f"order={ORDERS['acme']}" in lines[0]
    gone = run(env, *args, "--org", "hooli")
    assert gone.returncode == 0 and f"order={ORDERS['hooli']}" in gone.stdout and ORDERS["acme"] not in gone.stdout


def _org(slug: str) -> dict[str, str]:
    return {"client_id": f"{slug}-cli-client", "client_secret": f"{slug}-cli-client-secret-abcdef"}


@pytest.fixture
def two_organizations(tmp_path: Path):
    """A sandbox serving acme and globex, an organizations file pointing at it, the service's
    environment with each organization's client secret (webhook secrets: the test's to set)."""
    from support.sandbox import running

    scenario = {"organizations": {slug: {"clients": [_org(slug)]} for slug in ("acme", "globex")}}
    with running(scenario) as server:
        tables = []
        for slug in ("acme", "globex"):
            up = slug.upper()
            tables.append(
                f'[organizations.{slug}]\nwebhook_secrets_env = "{up}_WEBHOOK_SECRETS"\n'
                f'client_id = "{_org(slug)["client_id"]}"\nclient_secret_env = "{up}_CL_CLIENT_SECRET"\n'
                f'api_base = "{server.url}/_org/{slug}/api"\nauth_url = "{server.url}/_org/{slug}/oauth/token"\n'
            )
        (tmp_path / "organizations.toml").write_text("\n".join(tables))
        yield {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))},
            "WEBHOOK_APP_ORGANIZATIONS": str(tmp_path / "organizations.toml"),
            "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
            "ACME_CL_CLIENT_SECRET": _org("acme")["client_secret"],
            "GLOBEX_CL_CLIENT_SECRET": _org("globex")["client_secret"],
        }


def test_register_and_doctor_name_the_organizations_own_secrets_variable(two_organizations) -> None:
    env = {
        **two_organizations,
        "ACME_WEBHOOK_SECRETS": "main:acme-secret-0123456789abcdef",
        "GLOBEX_WEBHOOK_SECRETS": "main:globex-secret-0123456789abcdef",
    }
    callback = "http://127.0.0.1:9/webhooks/commercelayer/acme"
    r = run(env, "webhooks", "register", "--org", "acme", "--callback-url", callback)
    assert r.returncode == 0, r.stderr
    assert "\nACME_WEBHOOK_SECRETS=" in r.stdout and "CL_WEBHOOK_SECRETS" not in r.stdout.replace("ACME_", "")
    run(env, "db", "upgrade")
    r = run(env, "doctor", "--org", "acme", "--callback-url", callback)
    signing = next(line for line in r.stdout.splitlines() if "webhook signing" in line)
    assert "ACME_WEBHOOK_SECRETS" in signing and " CL_WEBHOOK_SECRETS" not in signing, signing


def test_commands_run_before_the_webhook_secrets_exist_and_need_no_other_organizations(two_organizations) -> None:
    """Setup order: `webhooks register` is what prints the secrets, so neither acme's nor
    globex's being unset stops registering acme (globex's are no business of acme's)."""
    callback = "http://127.0.0.1:9/webhooks/commercelayer/acme"
    r = run(two_organizations, "webhooks", "register", "--org", "acme", "--callback-url", callback, "--dry-run")
    assert r.returncode == 0 and "would create" in r.stdout, r.stderr
    r = run(two_organizations, "webhooks", "register", "--org", "acme", "--callback-url", callback)
    assert r.returncode == 0 and "\nACME_WEBHOOK_SECRETS=" in r.stdout, r.stderr
    run(two_organizations, "db", "upgrade")
    r = run(two_organizations, "doctor", "--org", "acme", "--callback-url", callback)
    line = next(x for x in r.stdout.splitlines() if "webhook secrets" in x)
    assert line.startswith("\u2717") and "set ACME_WEBHOOK_SECRETS" in line, r.stdout + r.stderr


def test_doctor_without_org_in_agency_mode_is_one_line_naming_the_argument(stored) -> None:
    _, env = stored
    r = run(env, "doctor", "--callback-url", "http://127.0.0.1:9/webhooks/commercelayer/acme")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines == [
        "\u2717 organization: --org: name one of the organizations: acme, globex"
        " (fix: pass --org SLUG: doctor checks one organization)",
        "1 checks failed",
    ], r.stdout
