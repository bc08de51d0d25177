"""Distinct, correctly signed Commerce Layer order bodies for the ingest benchmark.

Every body is derived from the real sample `tests/data/orders.place.guest-wire-transfer.json`
(about 30 KB compact): the order id (everywhere it appears, links included), the number, the
token, the customer e-mail, the timestamps and the amounts change per body, so no two bodies are
equal and the service's deduplication (SHA-256 of topic and raw body) never kicks in. Bodies are
compact JSON (no newline can occur in them), so they are written one per line as
`<signature> <body>` for the wrk Lua script (`bench/ingest.lua`) to load.

Sizes:
- `30k`: the real sample, as it is (30.8 KB compact).
- `1k`: the order resource with the first of its attributes, about 1 KB, no `included`.
- `300k`: the sample plus copies of its line items (each with a new id) in `included` and in the
  order's `line_items` relationship, about 300 KB.

    python bench/bodies.py --size 30k --count 10000 --out bench-results/bodies/30k.txt
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/bodies.py` from anywhere
    sys.path.insert(0, str(REPO))

from webhook_app.signing import sign  # noqa: E402 - the service's own signer

SAMPLE = REPO / "tests" / "data" / "orders.place.guest-wire-transfer.json"
SIZES = {"1k": 1_000, "30k": 30_000, "300k": 300_000}
#: the secret the benchmark's receivers (ours and the baseline) are configured with
BENCH_SECRET = "bench-shared-secret-0123456789abcdef"
_ALNUM = string.ascii_letters + string.digits
FORMAT_VERSION = 1  # bump when the bodies change, so cached files are regenerated


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_sample(path: Path = SAMPLE) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _template(sample: dict[str, Any], size: str) -> dict[str, Any]:
    """The document all bodies of one size are made from."""
    if size == "30k":
        return copy.deepcopy(sample)
    if size == "1k":
        data = sample["data"]
        varying = ("number", "customer_email", "token", "placed_at", "created_at", "updated_at", "total_amount_cents")
        attrs: dict[str, Any] = {k: data["attributes"][k] for k in varying}  # must be present
        doc = {"data": {"id": data["id"], "type": "orders", "attributes": attrs}}
        for key, value in data["attributes"].items():
            if key in attrs or key in ("cart_url", "return_url", "checkout_url"):
                continue  # long URLs; the small body keeps scalar fields
            attrs[key] = value
            if len(compact(doc)) >= SIZES["1k"] - 24:
                break
        return doc
    if size == "300k":
        doc = copy.deepcopy(sample)
        items = [i for i in sample["included"] if i["type"] == "line_items"]
        links = doc["data"]["relationships"]["line_items"].setdefault("data", [])
        n = 0
        while len(compact(doc)) < SIZES["300k"]:
            for item in items:
                n += 1
                clone = copy.deepcopy(item)
                clone["id"] = f"Li{n:08d}"
                doc["included"].append(clone)
                links.append({"type": "line_items", "id": clone["id"]})
        return doc
    raise ValueError(f"unknown size {size!r} (one of {', '.join(SIZES)})")


def _order_id(rng: random.Random, used: set[str]) -> str:
    while True:
        ident = "".join(rng.choice(_ALNUM) for _ in range(10))
        if ident not in used:
            used.add(ident)
            return ident


def generate(
    size: str = "30k", count: int = 10_000, *, seed: int = 1, sample: dict[str, Any] | None = None
) -> Iterator[bytes]:
    """`count` distinct compact bodies of about `size`, deterministic for a seed."""
    template = _template(sample or load_sample(), size)
    original_id = template["data"]["id"]
    text = compact(template).decode("utf-8")
    attrs = template["data"]["attributes"]
    rng = random.Random(seed)
    used = {original_id}
    # Field values that change per body: replaced as exact JSON fragments in the compact text
    # (cheaper than re-encoding 10,000 documents and exactly as compact).
    fragments = {
        key: json.dumps(attrs[key], ensure_ascii=False)
        for key in ("number", "customer_email", "token", "placed_at", "created_at", "updated_at", "total_amount_cents")
        if key in attrs
    }
    for n in range(count):
        order_id = _order_id(rng, used)
        minute = 10 + n % 50
        values = {
            "number": str(30_000_000 + n),
            "customer_email": json.dumps(f"bench.customer.{n}@example.com"),
            "token": json.dumps(hashlib.md5(f"{seed}:{n}".encode(), usedforsecurity=False).hexdigest()),
            "placed_at": json.dumps(f"2025-01-{1 + n % 28:02d}T12:{minute:02d}:55.783Z"),
            "created_at": json.dumps(f"2025-01-{1 + n % 28:02d}T12:{minute - 3:02d}:16.305Z"),
            "updated_at": json.dumps(f"2025-01-{1 + n % 28:02d}T12:{minute:02d}:55.790Z"),
            "total_amount_cents": str(1_000 + rng.randrange(100_000)),
        }
        body = text.replace(original_id, order_id)
        for key, old in fragments.items():
            body = body.replace(f'"{key}":{old}', f'"{key}":{values[key]}', 1)
        yield body.encode("utf-8")


def write_bodies(path: Path, size: str, count: int, *, secret: str = BENCH_SECRET, seed: int = 1) -> dict[str, Any]:
    """Write `<signature> <body>` lines; return a summary (count, sizes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    total = smallest = largest = 0
    with tmp.open("wb") as f:
        for body in generate(size, count, seed=seed):
            f.write(sign(body, secret=secret).encode("ascii") + b" " + body + b"\n")
            total += len(body)
            smallest = len(body) if not smallest else min(smallest, len(body))
            largest = max(largest, len(body))
    tmp.replace(path)
    return {
        "size": size,
        "count": count,
        "mean_bytes": round(total / max(1, count)),
        "min_bytes": smallest,
        "max_bytes": largest,
        "file": str(path),
    }


def ensure_bodies(directory: Path, size: str, count: int, *, secret: str = BENCH_SECRET) -> dict[str, Any]:
    """Generate the file for (size, count) unless an identical one is cached; return its summary."""
    path = directory / f"bodies-{size}-{count}-v{FORMAT_VERSION}.txt"
    meta_path = path.with_suffix(".json")
    key = hashlib.sha256(f"{secret}:{SAMPLE.read_bytes().hex()}:{FORMAT_VERSION}".encode()).hexdigest()
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return meta["summary"]  # type: ignore[no-any-return]
    summary = write_bodies(path, size, count, secret=secret)
    meta_path.write_text(json.dumps({"key": key, "summary": summary}))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="30k")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--secret", default=BENCH_SECRET)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    print(json.dumps(write_bodies(args.out, args.size, args.count, secret=args.secret)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
