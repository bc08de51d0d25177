"""Does a condition's value have its field's type? Checked when the policy loads.

A comparison between values of different types never holds at run time: `order.total_amount_cents`
(an integer) never equals, nor is greater than, the string "100"; `order.guest` (a boolean) never
equals "yes"; `matches` reads text only; `in` needs a list. Such a condition quietly never matches
(or, with `not_equals` and `not_in`, always does), so `mismatch` says what the field is (its type
in Commerce Layer's resource model, `model.field_kinds`) and what value it was given. A field the
model gives no type for (a key inside `metadata`) is not checked: the caller notes it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _boolean(v: Any) -> bool:
    return isinstance(v, bool)


def _nothing(v: Any) -> bool:
    return False


# Each model type: how a message names it, and which TOML values can ever compare with it.
# Date-times are ISO 8601 strings in a webhook body; objects and arrays equal no single value
# (compare one key of an object, `order.metadata.vip`; test either with `exists`).
KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", _text),
    "datetime": ("a date-time (an ISO 8601 string in the body)", _text),
    "integer": ("an integer", _number),
    "float": ("a number", _number),
    "boolean": ("a boolean", _boolean),
    "object": ("an object", _nothing),
    "json": ("an object", _nothing),
    "array": ("an array", _nothing),
}
_TEXT_KINDS = frozenset({"string", "datetime"})
_ORDERED = ("gt", "gte", "lt", "lte")


def describe(value: Any) -> str:
    """A TOML value as a message names it: `the string "100"`, `the integer 5`."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {json.dumps(value)}"
    if isinstance(value, (dt.date, dt.time)):
        return f"the unquoted TOML date-time {value.isoformat()}"
    return "a list" if isinstance(value, list) else "a table"


def _kinds_text(kinds: frozenset[str]) -> str:
    names = sorted({KINDS[k][0] for k in kinds})
    return " or ".join(names)


def _hint(kinds: frozenset[str], op: str, value: Any) -> str:
    """`; write gte = 100` where the intended value is plain, else nothing."""
    if op in ("in", "not_in"):
        return ""
    if "boolean" in kinds and isinstance(value, str) and value.lower() in ("true", "yes", "false", "no"):
        return f"; write {op} = {'true' if value.lower() in ('true', 'yes') else 'false'} (unquoted)"
    if kinds & {"integer", "float"} and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        return f"; write {op} = {value.strip()} (unquoted)" if number == number else ""
    if kinds & _TEXT_KINDS and isinstance(value, (dt.date, dt.time)):
        # Compared as text: quote it, written as Commerce Layer writes them.
        return '; quote it, as the body writes date-times: "2022-09-30T21:11:55.783Z"'
    if kinds & _TEXT_KINDS and _number(value):
        return f'; write {op} = "{value}" (quoted)'
    return ""


def mismatch(field: str, kinds: frozenset[str] | None, op: str, value: Any) -> str | None:
    """Why `{field = ..., op = value}` can never compare as written, or None. `kinds`: the field's
    types from the model (None: not given, so nothing is checked)."""
    if op == "exists" or kinds is None or not kinds <= set(KINDS):
        return None
    what = f"{field} is {_kinds_text(kinds)}"
    never = "always holds" if op in ("not_equals", "not_in") else "never holds"
    if op == "matches" and not kinds & _TEXT_KINDS:
        return f"{what}: `matches` reads text only, so the condition never holds"
    if op in _ORDERED and kinds <= {"boolean"}:
        return f"{what}: booleans have no order, so `{op}` never holds; use `equals`"
    if all(KINDS[k][1] is _nothing for k in kinds):
        key = f"`{field}.KEY`, or " if kinds & {"object", "json"} else ""
        return f"{what}: it equals no single value, so `{op}` {never}; compare {key}test it with `exists`"
    for v in value if isinstance(value, list) else [value]:
        if not any(KINDS[k][1](v) for k in kinds):
            given = f"`{op}` lists {describe(v)}" if isinstance(value, list) else f"`{op}` is given {describe(v)}"
            return f"{what}, but {given}: a value of another type never compares with it, so the condition {never}" + (
                _hint(kinds, op, v)
            )
    return None


def list_needed(field: str, op: str, value: Any) -> str:
    """`in = "eu"`: a single value where `in`/`not_in` needs a list (refused when the rule compiles)."""
    return f"{field}: `{op}` needs a list of values, got {describe(value)}; write {op} = [{_toml(value)}]"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (dt.date, dt.time)):
        return json.dumps(value.isoformat())
    return str(value)
