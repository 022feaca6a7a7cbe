"""``oms order show ID``: an order's whole story, straight from the database.

The order as the read model shows it, its events (``order_events``) in sequence, its execution reports, its
trade confirmations and settlement instructions, and its effect on the position: the signed quantities of its
confirmations (a BUY adds, a SELL takes away, a reversal undoes), beside the account's position in the symbol
now. ``--json`` prints the same as one JSON object (exact decimals). A missing order exits 1.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from common import jsonutil
from common.settings import load_settings
from common.store import tables
from common.store.db import make_engine
from common.store.field_crypto import DataKeys, with_data_keys
from services.api import queries
from services.api.order_events import order_events
from tools.figures import number

_ZERO = Decimal(0)


def _rows(connection: Connection, table: Any, order_id: str, *order_by: Any) -> list[dict[str, Any]]:
    query = select(table).where(table.c.order_id == order_id).order_by(*order_by)
    return [dict(row) for row in connection.execute(query).mappings()]


def signed_quantity(confirmation: dict[str, Any]) -> Decimal:
    """What a confirmation does to the position: + for a BUY, - for a SELL, the opposite for a reversal."""
    quantity: Decimal = confirmation["quantity"]
    return quantity if (confirmation["side"] == "BUY") != confirmation["reversal"] else -quantity


def order_story(connection: Connection, order_id: str) -> dict[str, Any] | None:
    """Everything about one order (snake_case, Decimal figures), or None when there is no such order."""
    order = queries.get_order(connection, order_id)
    if order is None:
        return None
    reports = order.pop("execution_reports")
    confirmations = _rows(connection, tables.trade_confirmations, order_id, tables.trade_confirmations.c.created_at)
    instructions = _rows(
        connection, tables.settlement_instructions, order_id, tables.settlement_instructions.c.created_at
    )
    position = connection.execute(
        select(tables.positions.c.quantity, tables.positions.c.average_cost).where(
            tables.positions.c.account_id == order["account_id"], tables.positions.c.symbol == order["symbol"]
        )
    ).first()
    return {
        "order": order,
        "events": order_events(connection, order_id),
        "execution_reports": reports,
        "trade_confirmations": confirmations,
        "settlement_instructions": instructions,
        "position_effect": {
            "account_id": order["account_id"],
            "symbol": order["symbol"],
            "quantity": sum((signed_quantity(c) for c in confirmations), _ZERO),
            "position_now": position.quantity if position is not None else _ZERO,
        },
    }


def _when(value: Any) -> str:
    return value.isoformat(timespec="milliseconds") if value is not None else "-"


def _details(payload: Any) -> str:
    # Text is for reading: the nulls (fields the event leaves unset) are left out; --json keeps everything.
    if isinstance(payload, dict):
        payload = {key: value for key, value in payload.items() if value is not None}
    return jsonutil.dumps(payload)


def _section(title: str, rows: list[dict[str, Any]], line: Any) -> list[str]:
    out = [f"{title} ({len(rows)})"]
    out += [f"  {line(row)}" for row in rows] or ["  none"]
    return out


def render(story: dict[str, Any]) -> str:
    """The story as text for a person."""
    o = story["order"]
    status = o["status"] if o["status"] == o["state"] else f"{o['status']} (state {o['state']})"
    price = f" @ {number(o['price'])}" if o.get("price") is not None else ""
    stop = f" stop {number(o['stop_price'])}" if o.get("stop_price") is not None else ""
    lines = [
        f"order {o['id']}  {status}",
        f"  {o['account_id']}  {o['side']} {number(o['quantity'])} {o['symbol']} {o['type']}{price}{stop}"
        f"  {o['time_in_force']}",
        f"  filled {number(o['filled_quantity'])}, leaves {number(o['leaves_quantity'])}, "
        f"avg price {number(o.get('average_execution_price'))}, fees {number(o.get('total_fees'))}",
        f"  created {_when(o.get('created_at'))}, updated {_when(o.get('updated_at'))}, version {o.get('version')}",
    ]
    for key, label in (
        ("client_order_id", "client order id"),
        ("strategy_id", "strategy"),
        ("broker_order_id", "broker order id"),
        ("rejection_code", "rejection code"),
        ("rejection_reason", "rejection reason"),
        ("notes", "notes"),
    ):
        if o.get(key):
            lines.append(f"  {label}: {o[key]}")
    lines.append("")
    lines += _section(
        "events",
        story["events"],
        lambda e: (
            f"{e['sequence']:>3}  {_when(e['timestamp'])}  {e['type']:<22} "
            f"by {e.get('user_id') or '-'}  {_details(e['payload'])}"
        ),
    )
    lines += _section(
        "execution reports",
        story["execution_reports"],
        lambda r: (
            f"{_when(r['timestamp'])}  {r['exec_type']:<14} execution {r['execution_id']}  "
            f"qty {number(r['quantity'])} @ {number(r['price'])}  cum {number(r.get('cum_qty'))} "
            f"leaves {number(r.get('leaves_qty'))}  fees {number(r['fees'])}  {r.get('venue') or ''}"
            f"{'  BUSTED' if r.get('busted') else ''}{'  ' + r['reason'] if r.get('reason') else ''}"
        ),
    )
    lines += _section(
        "trade confirmations",
        story["trade_confirmations"],
        lambda c: (
            f"{c['id']}  {'REVERSAL ' if c['reversal'] else ''}{c['side']} {number(c['quantity'])} @ "
            f"{number(c['price'])}  gross {number(c['gross_amount'])} fees {number(c['fees'])} "
            f"net {number(c['net_amount'])} {c['currency']}  trade {c['trade_date']} settles {c['settlement_date']}"
        ),
    )
    lines += _section(
        "settlement instructions",
        story["settlement_instructions"],
        lambda s: (
            f"{s['id']}  {s['securities_direction']} {number(s['quantity'])} {s['symbol']}  "
            f"cash {number(s['cash_amount'])} {s['currency']}  on {s['settlement_date']}  {s['status']}"
        ),
    )
    effect = story["position_effect"]
    quantity = effect["quantity"]
    lines += [
        "position",
        f"  this order: {'+' if quantity > 0 else ''}{number(quantity)} {effect['symbol']} "
        f"in {effect['account_id']}; position now {number(effect['position_now'])}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point of ``oms order`` (``show ID [--json] [--url URL]``)."""
    parser = argparse.ArgumentParser(prog="oms order", description="look at an order")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    show = commands.add_parser(
        "show", help="the order, its events, reports, confirmations, settlement and position effect"
    )
    show.add_argument("order_id", metavar="ID", help="the order's id")
    show.add_argument("--json", action="store_true", help="print it as one JSON object")
    show.add_argument("--url", default=None, help="database URL (default: OMS_DATABASE_URL)")
    args = parser.parse_args(argv)
    settings = load_settings()
    # With the data keys, as the services read it: the notes are stored encrypted.
    engine = with_data_keys(
        make_engine(args.url or settings.infra.database_url, pool_size=1), DataKeys(settings.infra.data_keys_file)
    )
    try:
        with engine.connect() as connection:
            story = order_story(connection, args.order_id)
    finally:
        engine.dispose()
    if story is None:
        print(f"oms order show: no order {args.order_id}", file=sys.stderr)
        return 1
    print(jsonutil.dumps(story) if args.json else render(story))
    return 0
