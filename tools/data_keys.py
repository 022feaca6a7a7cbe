"""``oms data-keys``: the key ring that encrypts client free text at rest (``common.store.field_crypto``).

What it encrypts: ``orders.notes``, the notes of ORDER_CREATED events, and cancel reasons: ``order_requests.reason``,
the reason of a cancel outstanding (``orders.pending_request``) and that of CANCEL_REQUESTED events and of a
client's ORDER_CANCELED (canceled before routing).

- ``status``: the keys, the current one, and how many stored values each key encrypts, by place;
- ``rotate``: a new key becomes current (running processes pick it up when they next look at the file);
- ``reencrypt [--batch N]``: every value not under the current key is brought under it, N rows per transaction;
  restartable: each batch commits, and a new run starts again from the rows not yet under the current key.
  Columns (v1 values, and legacy plaintext) are encrypted again; the events' cancel reasons (v2 envelopes) have
  their own key re-wrapped, which leaves their ciphertext, and so the audit hash chain, as it was
  (``common.store.event_chain``). Writes ``order_events``, which only the schema owner may: run it with
  ``OMS_DATABASE_URL`` (the default ``--url``);
- ``remove KID``: drop a key; refused for the current key and while any stored value still uses it.

Not re-encrypted: the notes of ORDER_CREATED events (v1, hashed as stored: rewriting one would break its chain)
and event reasons written in plaintext before encryption existed (encrypting one would change its hash). The
notes' key stays needed until retention drops their chains; ``remove`` counts them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, TextClause, text
from sqlalchemy.exc import DBAPIError

from common.settings import load_settings
from common.store.db import make_engine
from common.store.field_crypto import (
    ENVELOPE_PREFIX,
    NOTES,
    PREFIX,
    REASON,
    DataKeyError,
    KeyRing,
    load_or_create,
    update,
)

PLAINTEXT = "(plaintext)"
# The events whose reason is the client's (OrderRepository._stored_payload): a CANCEL_REQUESTED's, and an
# ORDER_CANCELED's before routing.
_CLIENT_REASON = "(type = 'CANCEL_REQUESTED' OR (type = 'ORDER_CANCELED' AND payload->>'at_venue' = 'false'))"
_INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class Place:
    """Where encrypted values are stored: ``value`` (an SQL expression) in ``table``, bound to ``row_id``.

    ``key`` pages the rows (their primary key); ``where`` narrows them. ``envelope``: v2 values, whose key is
    re-wrapped (else v1 values, encrypted again). ``update``: the compare-and-set of a value (None: never
    rewritten), so a writer that changed it meanwhile keeps its value.
    """

    name: str
    table: str
    key: str
    row_id: str
    value: str
    field: str
    where: str = "TRUE"
    envelope: bool = False
    update: str | None = None

    def _nonempty(self) -> str:
        return f"{self.where} AND coalesce({self.value}, '') <> ''"

    def usage_sql(self) -> TextClause:
        """Values by kid (``(plaintext)`` for values never encrypted)."""
        kid = f"CASE WHEN {self.value} LIKE :v1 OR {self.value} LIKE :v2 THEN split_part({self.value}, ':', 3)"
        # Identifiers and expressions from PLACES (code); every value is bound: B608 does not apply.
        statement = f"SELECT {kid} ELSE '{PLAINTEXT}' END AS kid, count(*) FROM {self.table}"  # nosec B608  # noqa: S608
        return text(f"{statement} WHERE {self._nonempty()} GROUP BY 1 ORDER BY 1")

    def stale_sql(self) -> TextClause:
        """A batch of rows whose value is not under the current key (``:current``), locked, from ``:after``."""
        # Envelopes only: a plaintext event reason stays (encrypting it would change the row's hash).
        kinds = f"{self.value} LIKE :v2" if self.envelope else "TRUE"
        # Identifiers and expressions from PLACES (code); every value is bound: B608 does not apply.
        columns = f"SELECT {self.key}, {self.row_id}, {self.value} FROM {self.table}"  # nosec B608  # noqa: S608
        return text(
            f"{columns} WHERE {self.key} > :after AND {self._nonempty()} AND {kinds}"
            f" AND {self.value} NOT LIKE :current ORDER BY {self.key} LIMIT :batch FOR NO KEY UPDATE"
        )


PLACES = (
    Place(
        "orders.notes",
        "orders",
        "id",
        "id",
        "notes",
        NOTES,
        update="UPDATE orders SET notes = :new WHERE id = :key AND notes = :old",
    ),
    Place(
        "orders.pending_request",
        "orders",
        "id",
        "id",
        "pending_request->>'reason'",
        REASON,
        where="jsonb_typeof(pending_request) = 'object'",
        update="UPDATE orders SET pending_request = jsonb_set(pending_request, '{reason}',"
        " to_jsonb(CAST(:new AS text))) WHERE id = :key AND pending_request->>'reason' = :old",
    ),
    Place(
        "order_requests.reason",
        "order_requests",
        "request_id",
        "request_id",
        "reason",
        REASON,
        update="UPDATE order_requests SET reason = :new WHERE request_id = :key AND reason = :old",
    ),
    Place(
        "order_events.reason",
        "order_events",
        "id",
        "order_id",
        "payload->>'reason'",
        REASON,
        where=_CLIENT_REASON,
        envelope=True,
        update="UPDATE order_events SET payload = jsonb_set(payload, '{reason}', to_jsonb(CAST(:new AS text)))"
        " WHERE id = :key AND payload->>'reason' = :old",
    ),
    # Hash-chained v1 values: counted (their key is still needed), never rewritten.
    Place(
        "order_events.notes",
        "order_events",
        "id",
        "order_id",
        "payload->>'notes'",
        NOTES,
        where="type = 'ORDER_CREATED'",
    ),
)
_PATTERNS = {"v1": PREFIX + "%", "v2": ENVELOPE_PREFIX + "%"}


def usage_by_kid(connection: Connection) -> dict[str, dict[str, int]]:
    """Stored values by place and by the key that encrypts them: ``{"orders.notes": {kid: n}, ...}``."""
    return {
        place.name: {str(k): int(n) for k, n in connection.execute(place.usage_sql(), _PATTERNS)} for place in PLACES
    }


def _current(place: Place, ring: KeyRing) -> str:
    return f"{ENVELOPE_PREFIX if place.envelope else PREFIX}{ring.current}:%"


def _reencrypt_place(engine: Engine, place: Place, ring: KeyRing, batch: int) -> int:
    if place.update is None:  # counted, never rewritten
        return 0
    done, after = 0, ""
    stale, rewrite = place.stale_sql(), text(place.update)
    while True:
        with engine.begin() as connection:
            parameters = {"after": after, "current": _current(place, ring), "batch": batch, **_PATTERNS}
            rows = list(connection.execute(stale, parameters))
            if not rows:
                return done
            if place.envelope:
                updates = [{"key": k, "old": v, "new": ring.rewrap(v, r, place.field)} for k, r, v in rows]
            else:
                updates = [
                    {"key": k, "old": v, "new": ring.seal(ring.open(v, r, place.field), r, place.field)}
                    for k, r, v in rows
                ]
            connection.execute(rewrite, updates)
        done += len(rows)
        after = rows[-1][0]
        print(f"{place.name}: re-encrypted {done} values (up to {after})", flush=True)


def reencrypt(engine: Engine, ring: KeyRing, batch: int) -> int:
    """Bring every rewritable value not under ``ring.current`` under it, ``batch`` rows per transaction; the
    count of values rewritten. Streams by key (keyset), so memory stays one batch whatever the table's size."""
    return sum(_reencrypt_place(engine, place, ring, batch) for place in PLACES)


def _status(ring: KeyRing, usage: dict[str, dict[str, int]]) -> None:
    for kid in ring.keys:
        mark = " (current)" if kid == ring.current else ""
        line = ", ".join(f"{place} {counts.get(kid, 0)}" for place, counts in usage.items())
        print(f"{kid}{mark}: {line}")
    plaintext = {place: counts[PLAINTEXT] for place, counts in usage.items() if counts.get(PLAINTEXT)}
    if plaintext:
        print(f"plaintext (written before encryption, or by a process without the keys): {plaintext}")
    for place, counts in usage.items():
        unknown = {k: n for k, n in counts.items() if k != PLAINTEXT and k not in ring.keys}
        if unknown:
            print(f"{place}: values under no key of the ring: {unknown}")


def main(argv: list[str]) -> int:
    """Entry point of ``oms data-keys``."""
    parser = argparse.ArgumentParser(prog="oms data-keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: OMS_DATABASE_URL, the schema owner)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="keys, the current one, and the stored values each encrypts")
    commands.add_parser("rotate", help="a new key becomes current")
    again = commands.add_parser("reencrypt", help="bring stored values under the current key, in batches")
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
            print(f"done: {count} values re-encrypted with {ring.current}")
            return 0
        with engine.connect() as connection:
            usage = usage_by_kid(connection)
        if args.command == "status":
            _status(ring, usage)
            return 0
        in_use = {place: counts.get(args.kid, 0) for place, counts in usage.items() if counts.get(args.kid)}
        if in_use:
            print(
                f"data key {args.kid} still encrypts {in_use}: `./oms data-keys reencrypt` brings the columns and"
                " the events' cancel reasons under the current key; the notes of order_events (ORDER_CREATED)"
                " keep their key until retention drops their chains",
                file=sys.stderr,
            )
            return 1
        ring = update(path, "remove", args.kid)
        print(f"removed {args.kid}; keys: {', '.join(ring.keys)}")
        return 0
    except DataKeyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
            raise
        print(
            f"oms data-keys: not allowed ({exc.orig}): re-encryption rewrites order_events, which only the schema"
            " owner may (OMS_DATABASE_URL, or --url)",
            file=sys.stderr,
        )
        return 1
    finally:
        engine.dispose()
