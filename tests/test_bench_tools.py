"""The benchmark's own tools (bench/): distinct, correctly signed ~30 KB bodies, and a baseline
that really verifies signatures. Fast; no server is started and nothing is timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline_app import create_app  # noqa: E402
from bench.bodies import BENCH_SECRET, SIZES, generate, write_bodies  # noqa: E402
from webhook_app.events import Delivery  # noqa: E402
from webhook_app.signing import parse_secrets, sign  # noqa: E402


def test_bodies_are_distinct_signed_compact_orders_of_about_30_kb(tmp_path):
    summary = write_bodies(tmp_path / "b.txt", "30k", 200)
    lines = (tmp_path / "b.txt").read_bytes().splitlines()
    assert summary["count"] == len(lines) == 200
    secrets = parse_secrets(f"bench:{BENCH_SECRET}")
    bodies, ids, identities = set(), set(), set()
    for line in lines:
        signature, body = line.split(b" ", 1)
        assert 29_000 <= len(body) <= 32_000  # the real sample is 30.8 KB compact
        assert json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode() == body
        d = Delivery.from_http(
            {"X-CommerceLayer-Topic": "orders.place", "X-CommerceLayer-Signature": signature.decode()},
            body,
            secrets=secrets,
        )
        assert d.is_order and d.secret_label == "bench"
        bodies.add(body)
        ids.add(d.order_id)
        identities.add(d.identity)
    assert len(bodies) == len(ids) == len(identities) == 200


@pytest.mark.parametrize("size", ["1k", "300k"])
def test_other_sizes_are_near_their_target(size):
    body = next(generate(size, 1))
    assert 0.9 * SIZES[size] <= len(body) <= 1.1 * SIZES[size]
    assert json.loads(body)["data"]["type"] == "orders"


def test_baseline_accepts_only_correct_signatures():
    client = create_app(BENCH_SECRET).test_client()
    body = next(generate("30k", 1))
    headers = {"Content-Type": "application/json", "X-CommerceLayer-Topic": "orders.place"}
    good = client.post(
        "/webhooks/commercelayer",
        data=body,
        headers={**headers, "X-CommerceLayer-Signature": sign(body, secret=BENCH_SECRET)},
    )
    assert good.status_code == 200
    for bad in (sign(body, secret="another-secret"), sign(body + b" ", secret=BENCH_SECRET), "", "é"):
        r = client.post("/webhooks/commercelayer", data=body, headers={**headers, "X-CommerceLayer-Signature": bad})
        assert r.status_code == 401, bad
    assert client.post("/webhooks/commercelayer", data=body, headers=headers).status_code == 401
