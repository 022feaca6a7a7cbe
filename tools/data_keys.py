"""``oms data-keys``: the key ring that encrypts order notes at rest (``common.store.field_crypto``).

- ``status``: the keys, the current one, and how many stored values each key encrypts;
- ``rotate``: a new key becomes current (running processes pick it up when they next look at the file);
- ``reencrypt [--batch N]``: re-encrypt ``orders.notes`` still under an older key (or legacy plaintext) with
  the current key, N rows per transaction; restartable: each batch commits, and a new run starts again from
  the rows not yet under the current key;
- ``remove KID``: drop a key; refused for the current key and while any stored value still uses it.

``order_events`` payloads (an ORDER_CREATED's notes) are not re-encrypted: the events are append-only and
hash-chained (``common.store.event_chain``), so rewriting one would break its chain. Their key stays needed
until retention drops their chains; ``remove`` counts them.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import Connection, Engine, text

from common.settings import load_settings
from common.store.db import make_engine
from common.store.field_crypto import PREFIX, DataKeyError, KeyRing, load_or_create, update

_STALE_ORDERS = text(
    "SELECT id, notes FROM orders"
    " WHERE id > :after AND notes IS NOT NULL AND notes <> '' AND notes NOT LIKE :current"
    " ORDER BY id LIMIT :batch FOR NO KEY UPDATE"
)
# Compare and set: a writer that changed the notes meanwhile keeps its value.
_SET_NOTES = text("UPDATE orders SET notes = :new WHERE id = :id AND notes = :old")
_ORDER_KIDS = text(
    "SELECT CASE WHEN notes LIKE :prefix THEN split_part(notes, ':', 3) ELSE '(plaintext)' END AS kid, count(*)"
    " FROM orders WHERE notes IS NOT NULL AND notes <> '' GROUP BY 1 ORDER BY 1"
)
_EVENT_KIDS = text(
    "SELECT CASE WHEN payload->>'notes' LIKE :prefix THEN split_part(payload->>'notes', ':', 3)"
    " ELSE '(plaintext)' END AS kid, count(*)"
    " FROM order_events WHERE type = 'ORDER_CREATED' AND coalesce(payload->>'notes', '') <> ''"
    " GROUP BY 1 ORDER BY 1"
)


def _like(kid: str) -> str:
    return f"{PREFIX}{kid}:%"


def usage_by_kid(connection: Connection) -> dict[str, dict[str, int]]:
    """Stored values by the key that encrypts them: ``{"orders": {kid: n}, "order_events": {kid: n}}``."""
    prefix = {"prefix": PREFIX + "%"}
    return {
        "orders": {str(k): int(n) for k, n in connection.execute(_ORDER_KIDS, prefix)},
        "order_events": {str(k): int(n) for k, n in connection.execute(_EVENT_KIDS, prefix)},
    }


def reencrypt(engine: Engine, ring: KeyRing, batch: int) -> int:
    """Re-encrypt every ``orders.notes`` not under ``ring.current``, ``batch`` rows per transaction; the count
    of rows rewritten. Streams by id (keyset), so memory stays one batch whatever the table's size."""
    done, after = 0, ""
    while True:
        with engine.begin() as connection:
            rows = list(
                connection.execute(_STALE_ORDERS, {"after": after, "current": _like(ring.current), "batch": batch})
            )
            if not rows:
                return done
            updates = [{"id": i, "old": notes, "new": ring.seal(ring.open(notes, i), i)} for i, notes in rows]
            connection.execute(_SET_NOTES, updates)
        done += len(rows)
        after = rows[-1][0]
        print(f"re-encrypted {done} rows (up to {after})", flush=True)


def main(argv: list[str]) -> int:
    """Entry point of ``oms data-keys``."""
    parser = argparse.ArgumentParser(prog="oms data-keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: OMS_DATABASE_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="keys, the current one, and the stored values each encrypts")
    commands.add_parser("rotate", help="a new key becomes current")
    again = commands.add_parser("reencrypt", help="re-encrypt order notes with the current key, in batches")
    again.add_argument("--batch", type=int, default=500, help="rows per transaction (default 500)")
    remove = commands.add_parser("remove", help="drop a key no stored value uses")
    remove.add_argument("kid")
    args = parser.parse_args(argv)
    settings = load_settings()
    path = settings.infra.data_keys_file
    if args.command == "rotate":
        ring = update(path, "rotate")
        print(f"current data key: {ring.current} (keys: {', '.join(ring.keys)})")
        return 0
    if args.command == "reencrypt" and args.batch < 1:
        parser.error("--batch must be at least 1")
    engine = make_engine(args.url or settings.infra.database_url, pool_size=1)
    try:
        ring = load_or_create(path)
        if args.command == "reencrypt":
            count = reencrypt(engine, ring, args.batch)
            print(f"done: {count} rows re-encrypted with {ring.current}")
            return 0
        with engine.connect() as connection:
            usage = usage_by_kid(connection)
        if args.command == "status":
            for kid in ring.keys:
                mark = " (current)" if kid == ring.current else ""
                print(f"{kid}{mark}: orders {usage['orders'].get(kid, 0)}, events {usage['order_events'].get(kid, 0)}")
            for table, counts in usage.items():
                unknown = {k: n for k, n in counts.items() if k not in ring.keys}
                if unknown:
                    print(f"{table}: values under no key of the ring: {unknown}")
            return 0
        in_use = {table: counts.get(args.kid, 0) for table, counts in usage.items()}
        if any(in_use.values()):
            print(
                f"data key {args.kid} still encrypts {in_use['orders']} orders rows and {in_use['order_events']}"
                " order_events rows: `./oms data-keys reencrypt` the orders; events keep their key until"
                " retention drops their chains",
                file=sys.stderr,
            )
            return 1
        ring = update(path, "remove", args.kid)
        print(f"removed {args.kid}; keys: {', '.join(ring.keys)}")
        return 0
    except DataKeyError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        engine.dispose()
