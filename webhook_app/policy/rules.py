"""The policy language: conditions, rules, and the TOML file validated into a `Policy`.

A policy is a TOML file, validated when loaded (errors name the rule and the field), with ordered,
named rules (first match wins) and an explicit default. Nothing in it is executed as code. Every
`field` is checked against the attributes the resources really have, every value against its
field's type, and every rule topic against Commerce Layer's order topics (`model.py`,
`operands.py`, `topics.py`): a misspelt name or a value of another type would match nothing.
After a rule decides, the guards (`guards.py`) run; no rule can override them. See
docs/reference/policy.md, *Policy format*, for the file format with examples.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2

from webhook_app.errors import PolicyError, PolicyModelError
from webhook_app.events import Event, Resource
from webhook_app.policy import model, operands, reach, readiness, wallet
from webhook_app.policy.decision import ACTIONS, SAVE, SKIP, STRATEGIES, USE_WALLET, WALLET_SOURCE_TYPES, Decision
from webhook_app.policy.guards import apply_guards
from webhook_app.policy.paths import dig
from webhook_app.topics import ORDER_TOPICS, TOPIC_PATTERN

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
        return [dig(r.fields(), rest, _MISSING) for r in (items or ())]
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
    return dig(resource.fields(), rest, _MISSING)


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
        # RE2: time linear in the input whatever the pattern, so no shopper-supplied string
        # (a name, a note, a SKU) can make a rule take exponential time, as `(a+)+$` would in `re`.
        rx = re2.compile(operand)
        return lambda v: isinstance(v, str) and rx.search(v) is not None
    cmp: Callable[[Any, Any], bool] = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }[op]
    return lambda v: v is not _MISSING and _ordered(v, operand) and cmp(v, operand)


def _compile_condition(node: Any, *, rule: str, where: str, roots: set[str]) -> Predicate:
    if not isinstance(node, Mapping):
        raise PolicyError("a condition must be a table", rule=rule, field=where)
    keys = set(node)
    combos = keys & set(COMBINATORS)
    if combos:
        if len(keys) != 1:
            raise PolicyError(
                f"`{next(iter(combos))}` must stand alone in its table (found {sorted(keys)})", rule=rule, field=where
            )
        return _compile_combination(node, next(iter(combos)), rule=rule, where=where, roots=roots)
    return _compile_comparison(node, rule=rule, where=where, roots=roots)


def _compile_combination(node: Mapping[str, Any], op: str, *, rule: str, where: str, roots: set[str]) -> Predicate:
    """`not`, `all` or `any` of the conditions under `op`."""
    if op == "not":
        inner = _compile_condition(node["not"], rule=rule, where=f"{where}.not", roots=roots)
        return lambda e: not inner(e)
    items = node[op]
    if not isinstance(items, list) or not items:
        raise PolicyError(f"`{op}` needs a non-empty list of conditions", rule=rule, field=f"{where}.{op}")
    preds = [_compile_condition(c, rule=rule, where=f"{where}.{op}[{i}]", roots=roots) for i, c in enumerate(items)]
    if op == "all":
        return lambda e: all(p(e) for p in preds)
    return lambda e: any(p(e) for p in preds)


def _compile_comparison(node: Mapping[str, Any], *, rule: str, where: str, roots: set[str]) -> Predicate:
    """`field`, one comparator and its operand, and for list fields a `quantifier`."""
    if "field" not in node:
        raise PolicyError(
            f"a condition needs `field` and one operator, or one of {', '.join(COMBINATORS)}", rule=rule, field=where
        )
    path = _field_path(node["field"], rule=rule, where=f"{where}.field")
    ops = set(node) - {"field", "quantifier"}
    unknown = ops - set(COMPARATORS)
    if unknown:
        raise PolicyError(
            f"unknown operator {sorted(unknown)[0]!r}; use one of {', '.join(COMPARATORS)}", rule=rule, field=where
        )
    if len(ops) != 1:
        raise PolicyError("a condition needs exactly one operator", rule=rule, field=where)
    op = ops.pop()
    operand = node[op]
    _check_operand(op, operand, rule=rule, where=f"{where}.{op}", fld=node["field"])
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


def _field_path(fld: Any, *, rule: str, where: str) -> tuple[str, ...]:
    """A condition's `field`, checked to be a dotted path under one of the ROOTS."""
    if not isinstance(fld, str) or not re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_-]+)*", fld):
        raise PolicyError("`field` must be a dotted path like `order.status`", rule=rule, field=where)
    path = tuple(fld.split("."))
    if path[0] not in ROOTS:
        raise PolicyError(f"unknown field root {path[0]!r}; use one of {', '.join(ROOTS)}", rule=rule, field=where)
    if path[0] == "topic" and len(path) > 1 or path[0] != "topic" and len(path) < 2:
        raise PolicyError(f"{fld!r} does not name a field", rule=rule, field=where)
    return path


def _check_operand(op: str, operand: Any, *, rule: str, where: str, fld: str) -> None:
    if op in ("in", "not_in"):
        if not isinstance(operand, (list, Mapping)):
            raise PolicyError(operands.list_needed(fld, op, operand), rule=rule, field=where)
        if not operand or isinstance(operand, Mapping):
            raise PolicyError("needs a non-empty list", rule=rule, field=where)
    elif op == "exists":
        if not isinstance(operand, bool):
            raise PolicyError("needs true or false", rule=rule, field=where)
    elif op == "matches":
        if not isinstance(operand, str) or len(operand) > 500:
            raise PolicyError("needs a regular expression string (at most 500 characters)", rule=rule, field=where)
        try:
            re2.compile(operand)
        except re2.error as exc:
            raise PolicyError(
                f"invalid regular expression for RE2 (no backreferences or lookaround): {exc}", rule=rule, field=where
            ) from None
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
    # The payment source types `when` limits the rule to (None: not limited) and rules out, for warnings.
    source_types: tuple[frozenset[str] | None, frozenset[str]] = (None, frozenset())
    # The dotted `field` paths its conditions read.
    fields: tuple[str, ...] = ()
    # Those compared with a value whose type the resource model cannot check (`order.metadata.vip`).
    unchecked: tuple[str, ...] = ()
    # Why the guards refuse every order its `when` matches (reach.py), or None.
    refused: str | None = None

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
    wallet_match: tuple[str, ...] = wallet.DEFAULT_MATCH

    # The rule's choice, before guards.
    def choose(self, event: Event) -> Decision:
        for rule in self.rules:
            if rule.matches(event):
                return Decision(
                    action=rule.action,
                    rule=rule.name,
                    reason=rule.description or f"rule {rule.name} matched",
                    strategy=rule.strategy,
                )
        return self.default

    def decide(self, event: Event) -> Decision:
        """The rule's choice, then the guards no rule can override."""
        return apply_guards(
            self.choose(event), event, wallet_source_types=self.wallet_source_types, wallet_match=self.wallet_match
        )

    def warnings(self) -> list[str]:
        """What in the policy would save a gateway's sources where the save cannot work
        (docs/explanation/worker.md, *Gateway readiness*); the policy is still valid."""
        out = []
        for rule in self.rules:
            if rule.action != SAVE:
                continue
            limited, excluded = rule.source_types
            types = (self.wallet_source_types if limited is None else limited) - excluded
            out += [f"rule {rule.name}: {w}" for w in readiness.topic_warnings(types, rule.topics)]
        if self.default.action == SAVE:
            out += [f"default: {w}" for w in readiness.topic_warnings(self.wallet_source_types, None)]
        return out + self._payment_source_notes()

    def _payment_source_notes(self) -> list[str]:
        """A `payment_source.*` field only some payment source types have, read by a rule that is
        not limited to those types: on the others the field is missing."""
        m = model.load_model()
        out = []
        for rule in self.rules:
            limited, excluded = rule.source_types
            types = (frozenset(m.payment_source_types) if limited is None else limited) - excluded
            for fld in dict.fromkeys(rule.fields):
                root, _, rest = fld.partition(".")
                name = rest.split(".")[0]
                if root != "payment_source" or name in ("id", "type"):
                    continue
                having = m.types_with(name)
                if having and types - having:
                    out.append(
                        f'rule {rule.name}: {fld}: only {", ".join(sorted(having))} have "{name}"; '
                        "on other payment sources it is missing"
                    )
        return out

    def never_acting(self) -> list[str]:
        """The rules that save or reuse and can act on no order, and why (reach.py)."""
        return reach.never_acting(self)

    def acts(self) -> bool:
        """Whether some order can be saved or reused (the default, or a rule that can act)."""
        return reach.acts(self)

    def notes(self) -> list[str]:
        """Fields compared with a value whose type is not checked, the model giving none."""
        return [
            f"rule {rule.name}: {fld}: the resource model gives no type for it, so the type of the value "
            "it is compared with is not checked"
            for rule in self.rules
            for fld in rule.unchecked
        ]

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
        actions = {r.action for r in self.rules} | {self.default.action}
        if actions & {SAVE, USE_WALLET}:
            # The wallet guards compare the order's payment source with each entry's, and the
            # reuse never picks an entry whose card has expired (the expiry is on the entry's
            # payment source): linkage appears only on included paths, so ask for the dotted path
            # too. The market makes the wallet activity countable per market.
            needed |= {wallet.WALLET, wallet.WALLET_SOURCES, "market"}
        return sorted(needed)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except OSError as exc:
        raise PolicyError(f"cannot read {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{p} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{p} is not UTF-8 text") from None
    return parse_policy(raw, source=str(p), text=text)


@dataclass(frozen=True)
class _Problem:
    """A name the resource model does not have, or a value of the wrong type for its field:
    `needle` is the quoted name, to find its line, at its `nth` occurrence when known."""

    rule: str
    where: str
    needle: str
    message: str
    nth: int | None = None


def _problem_lines(problems: Sequence[_Problem], source: str, text: str | None) -> tuple[str, ...]:
    """One line per problem: `FILE:LINE: rule 'r': message` when the name is found in the file's
    text (the nth problem on a name at its nth occurrence), else naming the rule and the field."""
    lines = text.splitlines() if text is not None else []
    seen: dict[str, int] = {}
    out = []
    for p in problems:
        if p.nth is None:
            seen[p.needle] = seen.get(p.needle, 0) + 1
        nth = p.nth or seen[p.needle]
        found = [
            n
            for n, line in enumerate(lines, 1)
            for _ in range(line.count(f'"{p.needle}"') + line.count(f"'{p.needle}'"))
        ]
        if len(found) >= nth:
            out.append(f"{source}:{found[nth - 1]}: rule {p.rule!r}: {p.message}")
        else:
            out.append(f"rule {p.rule!r}, field {p.where!r}: {p.message}")
    return tuple(out)


def parse_policy(raw: Mapping[str, Any], *, source: str = "<memory>", text: str | None = None) -> Policy:
    """Validate a decoded policy; `text`, the file's own text, lets errors name their line."""
    allowed_top = {"version", "default", "rules", "wallet_source_types", "wallet_match"}
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
    problems: list[_Problem] = []
    occurrences: dict[str, int] = {}  # how often each field has been named so far, to find its line
    for n, r in enumerate(rules_raw):
        rule = _parse_rule(r, n, roots, problems, occurrences)
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
    if problems:
        raise PolicyModelError(_problem_lines(problems, source, text))
    return Policy(
        rules=tuple(rules),
        default=default_decision,
        wallet_source_types=wallet_types,
        roots=frozenset(roots),
        source=source,
        wallet_match=_parse_wallet_match(raw.get("wallet_match")),
    )


def _parse_wallet_match(value: Any) -> tuple[str, ...]:
    """`wallet_match = [...]`: the keys that make another record's wallet entry the same card."""
    if value is None:
        return wallet.DEFAULT_MATCH
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise PolicyError(f"must be a list of matching keys ({', '.join(wallet.MATCH_KEYS)})", field="wallet_match")
    for k in value:
        if k not in wallet.MATCH_KEYS:
            raise PolicyError(
                f"unknown matching key {k!r}; use any of {', '.join(wallet.MATCH_KEYS)}", field="wallet_match"
            )
    if len(set(value)) != len(value):
        raise PolicyError("names a matching key twice", field="wallet_match")
    return tuple(value)


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
            raise PolicyError(
                f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}", rule=rule, field="strategy"
            )
    elif strategy is not None:
        raise PolicyError(f"`strategy` only applies to {USE_WALLET}", rule=rule, field="strategy")
    return strategy


def _parse_rule(r: Any, n: int, roots: set[str], problems: list[_Problem], occurrences: dict[str, int]) -> Rule:
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
    topics = _parse_topics(r.get("topics"), name, problems)
    description = r.get("description", "")
    if not isinstance(description, str):
        raise PolicyError("must be a string", rule=name, field="description")
    when = r.get("when")
    predicate: Predicate = (
        (lambda e: True) if when is None else _compile_condition(when, rule=name, where="when", roots=roots)
    )
    conditions = list(_conditions(when, "when"))
    unchecked = _check_conditions(name, conditions, problems, occurrences)
    return Rule(
        name=name,
        action=action,
        topics=topics,
        predicate=predicate,
        strategy=strategy,
        description=description,
        source_types=_source_types(when),
        fields=tuple(node["field"] for _, node in conditions),
        unchecked=unchecked,
        refused=reach.always_refused(when),
    )


def _check_conditions(
    rule: str,
    conditions: Sequence[tuple[str, Mapping[str, Any]]],
    problems: list[_Problem],
    occurrences: dict[str, int],
) -> tuple[str, ...]:
    """Add a problem for each field the resources do not have and each value that can never compare
    with its field (the field's nth naming in the file finds its line); the fields compared with a
    value whose type the model does not give, for a note."""
    unchecked: dict[str, None] = {}
    for where, node in conditions:
        fld = node["field"]
        nth = occurrences[fld] = occurrences.get(fld, 0) + 1
        path = tuple(fld.split("."))
        problem = model.check_field(path)
        if problem is not None:
            problems.append(_Problem(rule, f"{where}.field", fld, problem, nth))
            continue
        op = next(k for k in node if k not in ("field", "quantifier"))
        kinds = model.field_kinds(path)
        problem = operands.mismatch(fld, kinds, op, node[op])
        if problem is not None:
            problems.append(_Problem(rule, f"{where}.{op}", fld, problem, nth))
        elif kinds is None and op != "exists":
            unchecked[fld] = None
    return tuple(unchecked)


def _parse_topics(topics_raw: Any, name: str, problems: list[_Problem]) -> frozenset[str] | None:
    """A rule's `topics` (None: every order topic); a topic Commerce Layer never sends is a problem."""
    if topics_raw is None:
        return None
    if not isinstance(topics_raw, list) or not topics_raw:
        raise PolicyError("must be a non-empty list of topics", rule=name, field="topics")
    for t in topics_raw:
        if not isinstance(t, str) or not TOPIC_PATTERN.match(t) or not t.startswith("orders."):
            raise PolicyError(f"{t!r} is not an order topic like `orders.place`", rule=name, field="topics")
        if t not in ORDER_TOPICS:
            problems.append(
                _Problem(
                    name,
                    "topics",
                    t,
                    f'{t}: Commerce Layer sends no order topic "{t}"{model.suggest(t, ORDER_TOPICS)}',
                )
            )
    return frozenset(topics_raw)


def _conditions(node: Any, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, comparison) for each comparison under a `when` that has compiled (so is well formed)."""
    if node is None:
        return
    if "not" in node:
        yield from _conditions(node["not"], f"{where}.not")
    elif "all" in node or "any" in node:
        op = "all" if "all" in node else "any"
        for i, c in enumerate(node[op]):
            yield from _conditions(c, f"{where}.{op}[{i}]")
    else:
        yield where, node


def _source_types(node: Any) -> tuple[frozenset[str] | None, frozenset[str]]:
    """(the payment source types a valid condition limits itself to, or None; the types it rules out).

    Conservative: `payment_source.type` with `equals`/`in` limits and with `not_equals`/`not_in`
    rules out, under `all`; under `any` only limits that every branch has count; `not` limits
    nothing."""
    nothing: tuple[frozenset[str] | None, frozenset[str]] = (None, frozenset())
    if not isinstance(node, Mapping):
        return nothing
    if "all" in node:
        parts = [_source_types(c) for c in node["all"]]
        limits = [p[0] for p in parts if p[0] is not None]
        excluded = frozenset().union(*[p[1] for p in parts])
        return (frozenset.intersection(*limits) if limits else None), excluded
    if "any" in node:
        parts = [_source_types(c) for c in node["any"]]
        if any(p[0] is None for p in parts):
            return nothing
        return frozenset().union(*[p[0] - p[1] for p in parts if p[0] is not None]), frozenset()
    if node.get("field") != "payment_source.type":
        return nothing
    for op, limiting in (("equals", True), ("in", True), ("not_equals", False), ("not_in", False)):
        if op in node:
            value = node[op]
            values = frozenset(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
            return (values, frozenset()) if limiting else (None, values)
    return nothing
