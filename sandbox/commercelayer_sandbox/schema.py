"""The official Commerce Layer schemas the sandbox checks bodies against, and their extraction.

The JSON files in `schemas/` are fragments of Commerce Layer's OpenAPI description (version
3.6.0, `components.schemas.X`) with every `$ref` inlined, so that users without the full 4 MB
description can run the sandbox. `python -m commercelayer_sandbox.schema OPENAPI.json OUT_DIR`
regenerates them.

Two known conflicts between the official `orderResponse` and real Commerce Layer bodies:

(a) relationship `data` is declared as an object whose `type` enum is the *singular* relationship
    name (`customer`, `market`...), while real bodies carry plural resource types (`customers`,
    `stripe_payments`) and arrays for to-many relationships. Answers without `include` carry no
    linkage and validate against the unmodified schema (`order_response_validator(relaxed=False)`);
    answers with `include` validate against a copy where only those `data` subschemas are relaxed
    to "null, a {type, id} object, or an array of them" (`relaxed=True`).
(b) attributes are declared `number`/`string`/... without `nullable`, while real bodies carry
    nulls (the real order sample has `"tax_rate": null`, `"reference": null`...). The sandbox
    sends nulls as Commerce Layer does; response validators accept null for every attribute
    (`relax_nulls`), and check the type of every non-null value.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

#: The fragments extracted from the official description, by file stem.
FRAGMENTS = (
    "orderUpdate",
    "orderResponse",
    "orderResponseList",
    "customerPaymentSourceResponse",
    "webhookCreate",
    "webhookUpdate",
)
OPENAPI_VERSION = "3.6.0"

LINKAGE = {
    "type": "object",
    "required": ["type", "id"],
    "properties": {"type": {"type": "string"}, "id": {"type": "string"}},
}
RELAXED_DATA = {
    "$comment": "sandbox: relaxed, real bodies use plural types and arrays for to-many",
    "anyOf": [{"type": "null"}, LINKAGE, {"type": "array", "items": LINKAGE}],
}


def _resolve(node: Any, components: Mapping[str, Any], trail: tuple[str, ...] = ()) -> Any:
    """Return `node` with every local `$ref` replaced by (a resolved copy of) its target."""
    if isinstance(node, list):
        return [_resolve(item, components, trail) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in trail:
            raise ValueError(f"cyclic $ref {ref}")
        prefix = "#/components/schemas/"
        if not ref.startswith(prefix):
            raise ValueError(f"unsupported $ref {ref}")
        target: Any = components
        for part in ref[len(prefix) :].split("/"):
            target = target[part]
        return _resolve(target, components, (*trail, ref))
    return {key: _resolve(value, components, trail) for key, value in node.items()}


def extract(openapi: Mapping[str, Any], names: Iterable[str] = FRAGMENTS) -> dict[str, Any]:
    """The named `components.schemas` entries of `openapi`, `$ref`s inlined, with an origin note."""
    components = openapi["components"]["schemas"]
    version = openapi.get("info", {}).get("version", "?")
    out = {}
    for name in names:
        fragment = _resolve(components[name], components)
        out[name] = {
            "$comment": (
                f"Extracted from Commerce Layer OpenAPI {version}, components.schemas.{name}, "
                "with every $ref inlined. Do not edit: regenerate with "
                "`python -m commercelayer_sandbox.schema OPENAPI.json OUT_DIR`."
            ),
            **fragment,
        }
    return out


@cache
def load(name: str) -> dict[str, Any]:
    """One bundled fragment, parsed (cached; callers must not mutate it)."""
    path = resources.files("commercelayer_sandbox") / "schemas" / f"{name}.json"
    fragment: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return fragment


def relax_relationship_data(schema: Mapping[str, Any], *, list_document: bool = False) -> dict[str, Any]:
    """A copy of an `*Response` schema whose relationships' `data` accept real linkage."""
    relaxed = copy.deepcopy(dict(schema))
    data = relaxed["properties"]["data"]
    if list_document:
        data = data["items"]
    for rel in data["properties"]["relationships"]["properties"].values():
        if "data" in rel.get("properties", {}):
            rel["properties"]["data"] = RELAXED_DATA
    return relaxed


def relax_nulls(schema: Mapping[str, Any], *, list_document: bool = False) -> dict[str, Any]:
    """A copy of an `*Response` schema whose attributes also accept null (conflict (b))."""
    relaxed = copy.deepcopy(dict(schema))
    data = relaxed["properties"]["data"]
    if list_document:
        data = data["items"]
    attrs = data["properties"]["attributes"].get("properties", {})
    for name, prop in list(attrs.items()):
        attrs[name] = {"anyOf": [{"type": "null"}, prop]}
    return relaxed


@cache
def validator(name: str, *, relaxed: bool = False) -> Draft7Validator:
    """A validator for a bundled fragment. Response fragments accept null attributes
    (`relax_nulls`); `relaxed` also applies `relax_relationship_data`."""
    schema: dict[str, Any] = load(name)
    listing = name.endswith("ResponseList")
    if name.endswith(("Response", "ResponseList")):
        schema = relax_nulls(schema, list_document=listing)
    if relaxed:
        schema = relax_relationship_data(schema, list_document=listing)
    return Draft7Validator(schema)


def order_response_validator(*, relaxed: bool) -> Draft7Validator:
    return validator("orderResponse", relaxed=relaxed)


def pointer(path: Iterable[Any]) -> str:
    """A JSON pointer (`/data/attributes/x`) for a jsonschema error path."""
    return "".join(f"/{str(p).replace('~', '~0').replace('/', '~1')}" for p in path) or "/"


def errors(name: str, document: Any, *, relaxed: bool = False) -> list[tuple[str, str]]:
    """(pointer, message) for every way `document` breaks the fragment, sorted by pointer."""
    found = validator(name, relaxed=relaxed).iter_errors(document)
    return sorted((pointer(e.absolute_path), e.message) for e in found)


def attribute_names(name: str) -> frozenset[str]:
    """The attributes a create/update fragment declares (`data.attributes.properties`)."""
    attrs = load(name)["properties"]["data"]["properties"]["attributes"]
    return frozenset(attrs.get("properties", {}))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m commercelayer_sandbox.schema OPENAPI.json OUT_DIR", file=sys.stderr)
        return 2
    openapi = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fragment in extract(openapi).items():
        (out_dir / f"{name}.json").write_text(json.dumps(fragment, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
