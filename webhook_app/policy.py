"""The operator's policy: declarative rules that decide what to do with an order event.

A policy is a TOML file, validated when loaded (errors name the rule and the field), with ordered,
named rules (first match wins) and an explicit default. Nothing in it is executed as code.
After a rule decides, the guards below run; no rule can override them, and each records why it
refused. See README.md ("Policy format") for the file format with examples.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from webhook_app.errors import PolicyError
from webhook_app.events import TOPIC_PATTERN, Event, Resource

SAVE = "save_payment_source"
USE_WALLET = "use_wallet_source"
SKIP = "skip"
ACTIONS = (SAVE, USE_WALLET, SKIP)
STRATEGIES = ("newest", "oldest", "only")

# Payment source types with a documented "reusing the payment source" (wallet) flow.
# Not: paypal_payments, satispay_payments, wire_transfers. See Commerce Layer's how-to,
# https://docs.commercelayer.io/how-tos/placing-orders/payments/stripe/reusing-the-payment-source
WALLET_SOURCE_TYPES = frozenset(
    {
        "adyen_payments",
        "axerve_payments",
        "braintree_payments",
        "checkout_com_payments",
        "external_payments",
        "klarna_payments",
        "stripe_payments",
    }
)

ROOTS = ("topic", "order", "customer", "payment_source", "market", "line_items", "wallet")
# JSON:API `include_resources` each root needs in the webhook body.
ROOT_INCLUDES = {
    "customer": "customer",
    "payment_source": "payment_source",
    "market": "market",
    "line_items": "line_items",
    "wallet": "available_customer_payment_sources",
}
COMPARATORS = ("equals", "not_equals", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "matches")
COMBINATORS = ("all", "any", "not")
_MISSING = object()


@dataclass(frozen=True)
class Decision:
    """What to do with one event, and why."""

    action: str
    rule: str
    reason: str
    strategy: str | None = None
    guard: str | None = None
    wallet_entry_id: str | None = None

    @property
    def calls_commerce_layer(self) -> bool:
        return self.action in (SAVE, USE_WALLET)

    def guarded(self, guard: str, reason: str) -> Decision:
        return replace(self, action=SKIP, guard=guard, reason=f"guard {guard}: {reason}")


# --- conditions -----------------------------------------------------------------------------

Predicate = Callable[[Event], bool]


def _resolve(event: Event, path: Sequence[str]) -> Any:
    """The value at `path` (root first); lists for line_items/wallet fields, _MISSING if absent."""
    root, rest = path[0], path[1:]
    if root == "topic":
        return event.topic
    if root in ("line_items", "wallet"):
        items: tuple[Resource, ...] | None = event.line_items if root == "line_items" else event.wallet
        if rest == ("count",):
            return _MISSING if items is None else len(items)
        return [_dig(r.fields(), rest) for r in (items or ())]
    resource: Resource | None = {
        "order": event.order,
        "customer": event.customer,
        "payment_source": event.payment_source,
        "market": event.market,
    }[root]
    if resource is None:
        return _MISSING
    if root == "payment_source" and rest == ("type",):
        return event.payment_source_type or _MISSING
    return _dig(resource.fields(), rest)


def _dig(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        else:
            return _MISSING
    return value


def _ordered(a: Any, b: Any) -> bool:
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, num) and isinstance(b, num)) or (isinstance(a, str) and isinstance(b, str))


def _equal(value: Any, operand: Any) -> bool:
    """Equality that never confuses true with 1 and never matches a missing field."""
    if value is _MISSING:
        return False
    if isinstance(value, bool) or isinstance(operand, bool):
        return isinstance(value, bool) and isinstance(operand, bool) and value == operand
    return bool(value == operand)


def _compare(op: str, operand: Any) -> Callable[[Any], bool]:
    if op == "equals":
        return lambda v: _equal(v, operand)
    if op == "not_equals":
        eq = _compare("equals", operand)
        return lambda v: not eq(v)
    if op == "in":
        return lambda v: any(_equal(v, o) for o in operand)
    if op == "not_in":
        inside = _compare("in", operand)
        return lambda v: not inside(v)
    if op == "exists":
        return lambda v: (v is not _MISSING and v is not None) == operand
    if op == "matches":
        rx = re.compile(operand)
        return lambda v: isinstance(v, str) and rx.search(v) is not None
    cmp = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
           "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}[op]
    return lambda v: v is not _MISSING and _ordered(v, operand) and cmp(v, operand)


def _compile_condition(node: Any, *, rule: str, where: str, roots: set[str]) -> Predicate:
    if not isinstance(node, Mapping):
        raise PolicyError("a condition must be a table", rule=rule, field=where)
    keys = set(node)
    combos = keys & set(COMBINATORS)
    if combos:
        if len(keys) != 1:
            raise PolicyError(f"`{next(iter(combos))}` must stand alone in its table (found {sorted(keys)})",
                              rule=rule, field=where)
        op = next(iter(combos))
        if op == "not":
            inner = _compile_condition(node["not"], rule=rule, where=f"{where}.not", roots=roots)
            return lambda e: not inner(e)
        items = node[op]
        if not isinstance(items, list) or not items:
            raise PolicyError(f"`{op}` needs a non-empty list of conditions", rule=rule, field=f"{where}.{op}")
        preds = [_compile_condition(c, rule=rule, where=f"{where}.{op}[{i}]", roots=roots)
                 for i, c in enumerate(items)]
        if op == "all":
            return lambda e: all(p(e) for p in preds)
        return lambda e: any(p(e) for p in preds)

    if "field" not in node:
        raise PolicyError(f"a condition needs `field` and one operator, or one of {', '.join(COMBINATORS)}",
                          rule=rule, field=where)
    fld = node["field"]
    if not isinstance(fld, str) or not re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_-]+)*", fld):
        raise PolicyError("`field` must be a dotted path like `order.status`", rule=rule, field=f"{where}.field")
    path = tuple(fld.split("."))
    if path[0] not in ROOTS:
        raise PolicyError(f"unknown field root {path[0]!r}; use one of {', '.join(ROOTS)}",
                          rule=rule, field=f"{where}.field")
    if path[0] == "topic" and len(path) > 1 or path[0] != "topic" and len(path) < 2:
        raise PolicyError(f"{fld!r} does not name a field", rule=rule, field=f"{where}.field")
    ops = keys - {"field", "quantifier"}
    unknown = ops - set(COMPARATORS)
    if unknown:
        raise PolicyError(f"unknown operator {sorted(unknown)[0]!r}; use one of {', '.join(COMPARATORS)}",
                          rule=rule, field=where)
    if len(ops) != 1:
        raise PolicyError("a condition needs exactly one operator", rule=rule, field=where)
    op = ops.pop()
    operand = node[op]
    _check_operand(op, operand, rule=rule, where=f"{where}.{op}")
    quantifier = node.get("quantifier", "any")
    if quantifier not in ("any", "all"):
        raise PolicyError("`quantifier` must be `any` or `all`", rule=rule, field=f"{where}.quantifier")
    roots.add(path[0])
    test = _compare(op, operand)
    is_list = path[0] in ("line_items", "wallet") and path[1:] != ("count",)

    if is_list:
        if quantifier == "all":
            return lambda e: all(test(v) for v in _resolve(e, path))
        return lambda e: any(test(v) for v in _resolve(e, path))
    return lambda e: test(_resolve(e, path))


def _check_operand(op: str, operand: Any, *, rule: str, where: str) -> None:
    if op in ("in", "not_in"):
        if not isinstance(operand, list) or not operand:
            raise PolicyError("needs a non-empty list", rule=rule, field=where)
    elif op == "exists":
        if not isinstance(operand, bool):
            raise PolicyError("needs true or false", rule=rule, field=where)
    elif op == "matches":
        if not isinstance(operand, str) or len(operand) > 500:
            raise PolicyError("needs a regular expression string (at most 500 characters)", rule=rule, field=where)
        try:
            re.compile(operand)
        except re.error as exc:
            raise PolicyError(f"invalid regular expression: {exc}", rule=rule, field=where) from None
    elif op in ("gt", "gte", "lt", "lte"):
        if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
            raise PolicyError("needs a number or a string", rule=rule, field=where)
    elif isinstance(operand, (dict, list)):
        raise PolicyError("needs a single value (use `in` for a list)", rule=rule, field=where)


# --- rules and the policy -------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    topics: frozenset[str] | None
    predicate: Predicate = field(repr=False)
    strategy: str | None = None
    description: str = ""

    def matches(self, event: Event) -> bool:
        if self.topics is not None and event.topic not in self.topics:
            return False
        return self.predicate(event)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default: Decision
    wallet_source_types: frozenset[str] = WALLET_SOURCE_TYPES
    roots: frozenset[str] = frozenset()
    source: str = "<memory>"

    # The rule's choice, before guards.
    def choose(self, event: Event) -> Decision:
        for rule in self.rules:
            if rule.matches(event):
                return Decision(action=rule.action, rule=rule.name,
                                reason=rule.description or f"rule {rule.name} matched", strategy=rule.strategy)
        return self.default

    def decide(self, event: Event) -> Decision:
        """The rule's choice, then the guards no rule can override."""
        return apply_guards(self.choose(event), event, wallet_source_types=self.wallet_source_types)

    def topics(self) -> frozenset[str] | None:
        """Topics any acting rule listens to; None means every order topic."""
        out: set[str] = set()
        for rule in self.rules:
            if rule.action == SKIP:
                continue
            if rule.topics is None:
                return None
            out |= rule.topics
        if self.default.action != SKIP:
            return None
        return frozenset(out)

    def required_includes(self) -> list[str]:
        """`include_resources` a webhook needs so the policy and guards see what they test."""
        needed = {"customer", "payment_source"}  # the guards always look at these
        needed |= {ROOT_INCLUDES[r] for r in self.roots if r in ROOT_INCLUDES}
        if any(r.action == USE_WALLET for r in self.rules) or self.default.action == USE_WALLET:
            needed.add("available_customer_payment_sources")
        return sorted(needed)


def apply_guards(
    decision: Decision, event: Event, *, wallet_source_types: Iterable[str] = WALLET_SOURCE_TYPES
) -> Decision:
    """Refuse actions that cannot or must not happen, whatever the rule said."""
    if not decision.calls_commerce_layer:
        return decision
    if event.is_guest:
        return decision.guarded("guest_order", "guest orders have no wallet")
    if event.customer is None:
        return decision.guarded("no_customer", "the order has no customer")
    if decision.action == SAVE:
        if not event.payment_source_type:
            return decision.guarded("no_payment_source", "the order has no payment source")
        if event.payment_source_type not in set(wallet_source_types):
            return decision.guarded("no_wallet_flow",
                                    f"{event.payment_source_type} has no documented wallet flow")
        entry = wallet_entry_for_source(event)
        if entry is not None:
            return replace(decision.guarded("already_in_wallet", f"payment source is wallet entry {entry}"),
                           wallet_entry_id=entry)
    if decision.action == USE_WALLET and event.wallet is not None:
        chosen = choose_wallet_entry(event.wallet, decision.strategy or "newest")
        if chosen is None:
            return decision.guarded("no_wallet_entry",
                                    f"no wallet entry fits strategy {decision.strategy or 'newest'}")
        if event.payment_source is not None and _entry_source_id(chosen) == event.payment_source.id:
            return replace(decision.guarded("already_using_wallet_entry",
                                            f"payment source already is wallet entry {chosen.id}"),
                           wallet_entry_id=chosen.id)
        return replace(decision, wallet_entry_id=chosen.id)
    return decision


def _entry_source_id(entry: Resource) -> str | None:
    link = entry.linkage("payment_source")
    return str(link["id"]) if isinstance(link, dict) and link.get("id") else None


def wallet_entry_for_source(event: Event) -> str | None:
    """The id of the wallet entry made from this order's payment source, if one is listed."""
    if event.payment_source is None or not event.wallet:
        return None
    for entry in event.wallet:
        if _entry_source_id(entry) == event.payment_source.id:
            return entry.id
    return None


def choose_wallet_entry(entries: Sequence[Resource], strategy: str) -> Resource | None:
    """Pick a wallet entry: `newest` / `oldest` by created_at, `only` if there is exactly one."""
    if not entries:
        return None
    if strategy == "only":
        return entries[0] if len(entries) == 1 else None
    dated = sorted(entries, key=lambda r: (str(r.attributes.get("created_at") or ""), r.id))
    return dated[-1] if strategy == "newest" else dated[0]


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{p} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{p} is not UTF-8 text") from None
    return parse_policy(raw, source=str(p))


def parse_policy(raw: Mapping[str, Any], *, source: str = "<memory>") -> Policy:
    allowed_top = {"version", "default", "rules", "wallet_source_types"}
    unknown = set(raw) - allowed_top
    if unknown:
        raise PolicyError(f"unknown top-level key {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    if raw.get("version", 1) != 1:
        raise PolicyError("only `version = 1` is understood", field="version")
    default = raw.get("default")
    if not isinstance(default, Mapping) or "action" not in default:
        raise PolicyError("the policy needs an explicit [default] table with an `action`", field="default")
    roots: set[str] = set()
    default_decision = _parse_default(default)
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise PolicyError("`rules` must be an array of tables ([[rules]])", field="rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for n, r in enumerate(rules_raw):
        rule = _parse_rule(r, n, roots)
        if rule.name in seen:
            raise PolicyError("rule names must be unique", rule=rule.name, field="name")
        seen.add(rule.name)
        rules.append(rule)
    wst = raw.get("wallet_source_types")
    wallet_types = WALLET_SOURCE_TYPES
    if wst is not None:
        if not isinstance(wst, list) or not all(isinstance(t, str) and t for t in wst):
            raise PolicyError("must be a list of payment source types", field="wallet_source_types")
        wallet_types = frozenset(wst)
    return Policy(rules=tuple(rules), default=default_decision, wallet_source_types=wallet_types,
                  roots=frozenset(roots), source=source)


def _parse_default(d: Mapping[str, Any]) -> Decision:
    unknown = set(d) - {"action", "reason", "strategy"}
    if unknown:
        raise PolicyError(f"unknown key {sorted(unknown)[0]!r}", rule="default", field=sorted(unknown)[0])
    action = d["action"]
    if action not in ACTIONS:
        raise PolicyError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}", rule="default", field="action")
    strategy = _parse_strategy(d, action, "default")
    reason = d.get("reason", "no rule matched")
    if not isinstance(reason, str):
        raise PolicyError("must be a string", rule="default", field="reason")
    return Decision(action=action, rule="default", reason=reason, strategy=strategy)


def _parse_strategy(d: Mapping[str, Any], action: str, rule: str) -> str | None:
    strategy = d.get("strategy")
    if action == USE_WALLET:
        strategy = strategy or "newest"
        if strategy not in STRATEGIES:
            raise PolicyError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}",
                              rule=rule, field="strategy")
    elif strategy is not None:
        raise PolicyError(f"`strategy` only applies to {USE_WALLET}", rule=rule, field="strategy")
    return strategy


def _parse_rule(r: Any, n: int, roots: set[str]) -> Rule:
    label = f"#{n + 1}"
    if not isinstance(r, Mapping):
        raise PolicyError("each rule must be a table", rule=label)
    name = r.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise PolicyError("needs a `name` of letters, digits, `_`, `.` or `-`", rule=label, field="name")
    unknown = set(r) - {"name", "description", "topics", "action", "strategy", "when"}
    if unknown:
        raise PolicyError(f"unknown key {sorted(unknown)[0]!r}", rule=name, field=sorted(unknown)[0])
    action = r.get("action")
    if action not in ACTIONS:
        raise PolicyError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}", rule=name, field="action")
    strategy = _parse_strategy(r, action, name)
    topics_raw = r.get("topics")
    topics: frozenset[str] | None = None
    if topics_raw is not None:
        if not isinstance(topics_raw, list) or not topics_raw:
            raise PolicyError("must be a non-empty list of topics", rule=name, field="topics")
        for t in topics_raw:
            if not isinstance(t, str) or not TOPIC_PATTERN.match(t) or not t.startswith("orders."):
                raise PolicyError(f"{t!r} is not an order topic like `orders.place`", rule=name, field="topics")
        topics = frozenset(topics_raw)
    description = r.get("description", "")
    if not isinstance(description, str):
        raise PolicyError("must be a string", rule=name, field="description")
    when = r.get("when")
    predicate: Predicate = (lambda e: True) if when is None else _compile_condition(
        when, rule=name, where="when", roots=roots)
    return Rule(name=name, action=action, topics=topics, predicate=predicate, strategy=strategy,
                description=description)
