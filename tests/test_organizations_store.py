"""Agency mode in the store, on both backends: deliveries, jobs, decisions and order actions
carry their organization; one body is a different delivery in each organization; the claim goes
round the organizations with due jobs."""

from __future__ import annotations

import sqlite3

from support.builders import order_body

from webhook_app.events import Delivery, delivery_identity
from webhook_app.store import ClaimHolder, DecisionRecord, DeliveryFilter
from webhook_app.store.schema import migrations
from webhook_app.store.sqlite import SQLiteStore

T = 1_800_000_000.0


def delivery(order_id: str, org: str, topic: str = "orders.place") -> Delivery:
    body = order_body(order_id)
    return Delivery(
        topic=topic,
        body=body,
        identity=delivery_identity(topic, body, org),
        secret_label="main",
        resource_type="orders",
        resource_id=order_id,
        organization=org,
    )


def test_one_body_is_a_different_delivery_in_each_organization(store) -> None:
    a = store.record_delivery(delivery("ord1", "acme"), now=T)
    b = store.record_delivery(delivery("ord1", "globex"), now=T)
    again = store.record_delivery(delivery("ord1", "acme"), now=T)
    assert not a.duplicate and not b.duplicate and again.duplicate and again.delivery_id == a.delivery_id
    assert delivery_identity("orders.place", b"x") == delivery_identity("orders.place", b"x", "")  # old rows
    assert [d.organization for d in store.list_deliveries(DeliveryFilter(organization="globex"))] == ["globex"]
    assert store.get_delivery(a.delivery_id).organization == "acme"


def test_order_actions_are_per_organization(store) -> None:
    for org in ("acme", "globex"):
        store.record_delivery(delivery("ord1", org), now=T)
    job = store.claim_job(worker="w", lease_seconds=60, now=T, organizations=["acme"])
    assert job is not None and job.organization == "acme"
    claim = store.begin_action(
        ClaimHolder("ord1", worker="w", job_id=job.id, now=T, lease_seconds=60, organization="acme"),
        "save_payment_source",
    )
    assert claim.status == "acquired"
    decision = DecisionRecord(rule="r", action="save_payment_source", reason="x", outcome="applied", mode="enforce")
    assert store.finish_job(job.id, worker="w", decision=decision, now=T, action="save_payment_source")
    assert store.action_state("ord1", "save_payment_source", organization="acme") == "done"
    # the same order id in another organization is another order
    assert store.action_state("ord1", "save_payment_source", organization="globex") is None
    other = store.claim_job(worker="w", lease_seconds=60, now=T, organizations=["acme", "globex"])
    assert other is not None and other.organization == "globex"
    claim = store.begin_action(
        ClaimHolder("ord1", worker="w", job_id=other.id, now=T, lease_seconds=60, organization="globex"),
        "save_payment_source",
    )
    assert claim.status == "acquired"


def test_the_claim_goes_round_the_organizations_with_due_jobs(store) -> None:
    for n in range(50):
        store.record_delivery(delivery(f"big{n}", "acme"), now=T - 100 + n * 0.01)
    store.record_delivery(delivery("small1", "globex"), now=T)
    store.record_delivery(delivery("small2", "initech"), now=T)
    orgs = ["acme", "globex", "initech"]
    first = [store.claim_job(worker="w", lease_seconds=60, now=T, organizations=orgs) for _ in range(4)]
    assert sorted(j.organization for j in first[:3]) == orgs  # each had a turn within three claims
    assert first[3].organization == "acme"
    # a removed organization's jobs wait (nobody holds its credentials)
    assert store.claim_job(worker="w", lease_seconds=60, now=T, organizations=["initech"]) is None


def test_the_migration_gives_old_rows_to_the_implicit_organization(tmp_path) -> None:
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    for version in migrations("sqlite")[:9]:
        for statement in version:
            conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (9)")
    conn.execute(
        "INSERT INTO order_actions (order_id, action, state, updated_at) VALUES ('ordOLD', 'save_payment_source', 'done', 1)"
    )
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.migrate() == 10
        assert store.action_state("ordOLD", "save_payment_source") == "done"
    finally:
        store.close()
