"""`trigger`: ask Commerce Layer to send an order's event again (`webhook_app.ops.trigger`)."""

from __future__ import annotations

import argparse
from typing import Any

from webhook_app.cli.common import add_org_argument, commerce_layer_client, fail, load_settings_for


def cmd_trigger(args: argparse.Namespace) -> int:
    from webhook_app.errors import CommerceLayerError, InvalidPayload
    from webhook_app.events import check_topic
    from webhook_app.ops.trigger import EventNotFound, trigger

    if args.event is not None and (args.order is not None or args.topic is not None):
        return fail("give --event ID, or --order ID with --topic TOPIC, not both")
    if args.event is None and (args.order is None or args.topic is None):
        return fail("give --order ID with --topic TOPIC (e.g. orders.place), or --event ID")
    if args.topic is not None:
        try:
            check_topic(args.topic)
        except InvalidPayload:
            return fail(f"--topic {args.topic[:60]!r} is not a topic like orders.place")
    settings = load_settings_for(args)  # agency mode: --org SLUG's credentials and API
    client = commerce_layer_client(settings)
    try:
        done = trigger(client, order_id=args.order, topic=args.topic, event_id=args.event)
    except EventNotFound as exc:
        return fail(exc.detail)
    except CommerceLayerError as exc:
        return fail(f"triggering the event: {exc}")
    finally:
        client.close()
    of = f" of order {done.order_id}" if done.order_id else ""
    print(f"event {done.event_id} ({done.name or 'unnamed'}){of}: Commerce Layer will send it to its webhooks again")
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser(
        "trigger", help="ask Commerce Layer to send an order's event again (PATCH /api/events/{id} _trigger)"
    )
    sp.add_argument("--order", default=None, metavar="ID", help="the order whose event to send again")
    sp.add_argument("--topic", default=None, metavar="TOPIC", help="the event's topic, e.g. orders.place")
    sp.add_argument("--event", default=None, metavar="ID", help="the event's id at Commerce Layer")
    add_org_argument(sp)
    sp.set_defaults(func=cmd_trigger)
