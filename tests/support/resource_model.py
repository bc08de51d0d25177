"""Derive `webhook_app/data/resources.json` (the resource model policies are checked against) from
Commerce Layer's `resources.json` (its API reference data, one record per resource).

Only the resources a policy can read are kept: orders, customers, markets, line items, wallet
entries (`customer_payment_sources`) and every payment source type an order's `payment_source`
may be. For each: the attributes Commerce Layer sends (`fetchable`) with their type, the write-only
ones (triggers like `_place`, which no body carries) and the relationship names.

    python tests/support/resource_model.py [PATH/TO/resources.json]   # rewrites the shipped file

tests/test_policy_model.py checks the shipped file against the reference when it is present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REFERENCE = Path("/work/shared/commercelayer/resources.json")
SHIPPED = Path(__file__).parents[2] / "webhook_app" / "data" / "resources.json"
# The resources the policy's roots read, by JSON:API type (payment sources come from the order).
READ = ("orders", "customers", "markets", "line_items", "customer_payment_sources")


def _singular(plural: str) -> str:
    return plural[:-1]


def derive(reference: list[dict[str, Any]]) -> dict[str, Any]:
    by_id = {r["id"]: r["attributes"] for r in reference}
    payment_source_types = sorted(by_id["order"]["relationships"]["payment_source"]["enum"])
    out: dict[str, Any] = {}
    for plural in (*READ, *payment_source_types):
        res = by_id[_singular(plural)]
        fields = res.get("fields", {})
        out[plural] = {
            "attributes": {n: str(f.get("type", "")) for n, f in fields.items() if f.get("fetchable", True)},
            "write_only": sorted(n for n, f in fields.items() if not f.get("fetchable", True)),
            "relationships": sorted(res.get("relationships", {})),
        }
    return {
        "source": "derived by tests/support/resource_model.py from Commerce Layer's resources.json (API reference data)",
        "payment_source_types": payment_source_types,
        "resources": out,
    }


def render(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE
    SHIPPED.write_text(render(derive(json.loads(src.read_text(encoding="utf-8")))), encoding="utf-8")
    print(f"wrote {SHIPPED}")
