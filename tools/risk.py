"""``oms risk``: the risk gate's limits, restricted symbols and kill switch, changed while the system runs.

    ./oms risk show [--account ACC-001]
    ./oms risk set --account ACC-001 max_open_orders=50 price_collar_percent=5 --reason "desk request"
    ./oms risk set --global max_order_notional=25000000 duplicate_window_seconds=inherit
    ./oms risk restrict AAPL --account ACC-003 --reason "insider list"     (--global: every account)
    ./oms risk unrestrict AAPL --account ACC-003
    ./oms risk halt --account ACC-002 --reason "runaway strategy"         (--global: every account)
    ./oms risk resume --account ACC-002

Every change is audited (who: ``--by``, default the login name). The gate reads the tables in each batch:
no restart needed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from sqlalchemy import Connection

from common.domain.validation import plain
from common.risk import admin
from common.risk.limits import LIMIT_SPECS, InvalidLimit, LimitValue
from common.settings import load_settings
from common.store.db import make_engine


def _show_value(value: LimitValue | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return plain(value)


def _scope_name(account_id: str | None) -> str:
    return f"account {account_id}" if account_id is not None else "global"


def _add_scope(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--account", help="the account the change is for")
    scope.add_argument("--global", dest="is_global", action="store_true", help="every account (the defaults)")


def _add_who(parser: argparse.ArgumentParser, reason_required: bool = False) -> None:
    parser.add_argument("--reason", required=reason_required, help="why (kept in the audit trail)")
    parser.add_argument("--by", default=None, help="who makes the change (default: your login name)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oms risk", description="risk limits, restricted symbols, kill switch")
    parser.add_argument("--url", default=None, help="database URL (default: OMS_DATABASE_URL)")
    sub = parser.add_subparsers(dest="command", required=True)

    show = sub.add_parser("show", help="the limits in force, halts, restricted symbols and recent changes")
    show.add_argument("--account", help="show an account's limits (default: the global ones)")
    show.add_argument("--changes", type=int, default=10, help="how many recent changes to list (default 10)")

    names = ", ".join(spec.name for spec in LIMIT_SPECS)
    set_ = sub.add_parser("set", help="change limits: NAME=VALUE ... (VALUE inherit clears it)")
    _add_scope(set_)
    set_.add_argument("assignments", nargs="+", metavar="NAME=VALUE", help=f"limits: {names}")
    _add_who(set_)

    for name, text in (("restrict", "forbid trading a symbol"), ("unrestrict", "allow a restricted symbol again")):
        command = sub.add_parser(name, help=text)
        command.add_argument("symbol")
        _add_scope(command)
        _add_who(command)

    halt = sub.add_parser("halt", help="kill switch: stop new orders (cancels still go through)")
    _add_scope(halt)
    _add_who(halt, reason_required=True)
    resume = sub.add_parser("resume", help="lift a halt")
    _add_scope(resume)
    _add_who(resume)
    return parser


def _assignments(items: Sequence[str]) -> dict[str, str]:
    changes: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidLimit(f"expected NAME=VALUE, got {item!r}")
        changes[name.strip()] = value.strip()
    return changes


def _show(connection: Connection, account_id: str | None, changes: int) -> None:
    view = admin.show_limits(connection, account_id)
    print(f"limits ({_scope_name(account_id)}):")
    for spec in LIMIT_SPECS:
        value = getattr(view.effective, spec.name)
        source = view.sources[spec.name]
        print(f"  {spec.name:<32} {_show_value(value):>16}  {source:<8} {spec.description}")
    found = admin.halts(connection)
    print("halts:" if found else "halts: none")
    for h in found:
        print(f"  {_scope_name(h.account_id)} since {h.since:%Y-%m-%d %H:%M:%S %Z} by {h.halted_by}: {h.reason}")
    restricted = admin.restrictions(connection, account_id)
    print("restricted symbols:" if restricted else "restricted symbols: none")
    for r in restricted:
        print(f"  {r.symbol:<10} {_scope_name(r.account_id)}{': ' + r.reason if r.reason else ''}")
    rows = admin.recent_changes(connection, account_id, changes)
    if rows:
        print("recent changes:")
    for row in rows:
        print(
            f"  {row['changed_at']:%Y-%m-%d %H:%M:%S} {row['changed_by'] or '?'} {_scope_name(row['account_id'])}"
            f" {row['kind']} {row['item']}: {row['old_value']} -> {row['new_value']}"
            f"{' (' + row['reason'] + ')' if row['reason'] else ''}"
        )


def _run(connection: Connection, args: argparse.Namespace) -> str:
    account_id: str | None = getattr(args, "account", None)
    by = getattr(args, "by", None) or getpass.getuser()
    scope = _scope_name(account_id)
    if args.command == "set":
        done = admin.set_limits(connection, account_id, _assignments(args.assignments), by=by, reason=args.reason)
        if not done:
            return f"{scope}: nothing changed"
        return "\n".join(f"{scope}: {c.name} {_show_value(c.old)} -> {_show_value(c.new)}" for c in done)
    if args.command == "restrict":
        changed = admin.restrict(connection, account_id, args.symbol, by=by, reason=args.reason)
        return f"{args.symbol} restricted for {scope}" + ("" if changed else " (already)")
    if args.command == "unrestrict":
        changed = admin.unrestrict(connection, account_id, args.symbol, by=by, reason=args.reason)
        return f"{args.symbol} {'no longer' if changed else 'was not'} restricted for {scope}"
    if args.command == "halt":
        found, new = admin.halt(connection, account_id, by=by, reason=args.reason)
        state = "halted" if new else f"already halted since {found.since:%Y-%m-%d %H:%M:%S %Z} by {found.halted_by}"
        return f"new orders of {scope}: {state}"
    if args.command == "resume":
        changed = admin.resume(connection, account_id, by=by, reason=args.reason)
        return f"new orders of {scope}: {'resumed' if changed else 'were not halted'}"
    raise AssertionError(args.command)


def main(argv: list[str]) -> int:
    """Entry point of ``oms risk``."""
    args = _parser().parse_args(argv)
    if getattr(args, "is_global", False):
        args.account = None
    engine = make_engine(args.url or load_settings().infra.database_url, pool_size=1)
    try:
        with engine.begin() as connection:
            if args.command == "show":
                _show(connection, args.account, args.changes)
            else:
                print(_run(connection, args))
    except (InvalidLimit, admin.UnknownAccount, admin.UnknownSymbol) as exc:
        print(f"oms risk: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
