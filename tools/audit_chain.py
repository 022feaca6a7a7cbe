"""``./oms audit verify [--order ID]``: walk the ``order_events`` hash chains and name what does not hold.

Every order's events are checked against ``common/store/event_chain.py``: a row whose fields no longer match its
hash was CHANGED; a gap in the sequences, or a chain that stops short of the order's head, means rows were
REMOVED; a row that does not link to the one before it, or stands after the head, was INSERTED. A chain that
retention dropped is fine when ``purged_order_chains`` recorded it with the same head.

The orders are read in batches by id (keyset), each batch with its events in one statement, so the walk holds
one batch in memory and sees each order and its events in the same snapshot while the system keeps writing;
it reads as the read-only role (``OMS_READ_DATABASE_URL``) unless ``--url`` says otherwise.

Exit codes: 0 every chain whole; 1 findings, or no such order; 3 not checked (the database has no chain:
migration 0007 is not applied).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, text
from sqlalchemy.engine import make_url

from common.settings import load_settings
from common.store.db import make_engine
from common.store.event_chain import CHANGED, INSERTED, REMOVED, ChainEvent, Finding, Purge, check_chain

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_NOT_CHECKED = 3
DEFAULT_BATCH = 1000
PROGRESS_EVERY = 100_000

_SELECT = """
SELECT b.id AS order_id, b.last_event_hash AS head, p.last_sequence AS purged_through, p.last_event_hash AS purged_head,
    e.id AS event_id, e.sequence, e.type, e.payload::text AS payload_json, e.user_id, e.timestamp,
    e.correlation_id, e.message_id, e.prev_hash, e.hash
FROM batch AS b
LEFT JOIN purged_order_chains AS p ON p.order_id = b.id
LEFT JOIN order_events AS e ON e.order_id = b.id
ORDER BY b.id, e.sequence
"""
_BATCH_SQL = "WITH batch AS (SELECT id, last_event_hash FROM orders WHERE id > :after ORDER BY id LIMIT :limit)"
_ONE_SQL = "WITH batch AS (SELECT id, last_event_hash FROM orders WHERE id = :order_id)"
# Constants joined at import; only the values are bound (:after, :limit): B608 does not apply.
_BATCH = text(_BATCH_SQL + _SELECT)  # nosec B608
# Constants joined at import; only the value is bound (:order_id): B608 does not apply.
_ONE = text(_ONE_SQL + _SELECT)  # nosec B608
_HAS_CHAIN = text(
    "SELECT count(*) FROM information_schema.columns WHERE table_name = 'order_events' AND column_name = 'hash'"
)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


@dataclass
class Tally:
    """What the walk saw."""

    orders: int = 0
    events: int = 0
    purged: int = 0
    findings: dict[str, int] = field(default_factory=lambda: {CHANGED: 0, REMOVED: 0, INSERTED: 0})

    @property
    def found(self) -> int:
        return sum(self.findings.values())

    def summary(self, seconds: float) -> str:
        counts = ", ".join(f"{n} {kind}" for kind, n in self.findings.items())
        verdict = "every chain whole" if not self.found else _count(self.found, "finding")
        return (
            f"audit verify: {_count(self.orders, 'order')}, {_count(self.events, 'event')} checked in {seconds:.1f}s: "
            f"{counts}; {_count(self.purged, 'chain')} dropped by retention as recorded; {verdict}"
        )


@dataclass
class OrderChain:
    """One order's row and its events, as one batch's rows give them."""

    order_id: str
    head: bytes | None
    purge: Purge | None
    events: list[ChainEvent] = field(default_factory=list)


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _chains(rows: Iterable[RowMapping]) -> Iterator[OrderChain]:
    """Group a batch's rows (ordered by order id, then sequence) into chains."""
    current: OrderChain | None = None
    for row in rows:
        if current is None or current.order_id != row["order_id"]:
            if current is not None:
                yield current
            purged_head = _bytes(row["purged_head"])
            current = OrderChain(
                row["order_id"],
                _bytes(row["head"]),
                None if purged_head is None else Purge(int(row["purged_through"]), purged_head),
            )
        if row["event_id"] is not None:
            current.events.append(
                ChainEvent(
                    id=row["event_id"],
                    order_id=row["order_id"],
                    sequence=row["sequence"],
                    type=row["type"],
                    payload_json=row["payload_json"],
                    user_id=row["user_id"],
                    timestamp=row["timestamp"],
                    correlation_id=row["correlation_id"],
                    message_id=row["message_id"],
                    prev_hash=_bytes(row["prev_hash"]),
                    hash=_bytes(row["hash"]),
                )
            )
    if current is not None:
        yield current


def _check(chains: Iterator[OrderChain], tally: Tally) -> tuple[list[Finding], str | None]:
    """Check each chain; the findings and the last order id seen."""
    findings: list[Finding] = []
    last: str | None = None
    for chain in chains:
        last = chain.order_id
        tally.orders += 1
        tally.events += len(chain.events)
        if chain.purge is not None:
            tally.purged += 1
        for finding in check_chain(chain.order_id, chain.head, chain.events, chain.purge):
            tally.findings[finding.kind] += 1
            findings.append(finding)
    return findings, last


def verify_all(
    connection: Connection, tally: Tally, order_id: str | None = None, batch: int = DEFAULT_BATCH
) -> Iterator[Finding]:
    """Walk the chains in batches of ``batch`` orders, counting into ``tally``; yields each finding."""
    if order_id is not None:
        findings, _ = _check(_chains(connection.execute(_ONE, {"order_id": order_id}).mappings()), tally)
        yield from findings
        return
    after = ""
    reported = 0
    while True:
        rows = connection.execute(_BATCH, {"after": after, "limit": batch}).mappings()
        findings, last = _check(_chains(rows), tally)
        yield from findings
        if last is None:
            return
        after = last
        if tally.orders - reported >= PROGRESS_EVERY:
            reported = tally.orders
            print(f"audit verify: {tally.orders:,} orders so far ...", file=sys.stderr, flush=True)


def has_chain(connection: Connection) -> bool:
    """Whether the database has the chain columns (migration 0007)."""
    return bool(connection.execute(_HAS_CHAIN).scalar())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oms audit verify",
        description="Walk the order_events hash chains; name every row changed, removed or inserted. "
        "Exit 0 clean, 1 findings (or no such order), 3 not checked.",
    )
    parser.add_argument("--order", metavar="ID", help="this order's chain only")
    parser.add_argument("--url", help="database URL (default: OMS_READ_DATABASE_URL, the read-only role)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"orders per query (default {DEFAULT_BATCH})")
    return parser


def run(engine: Engine, order_id: str | None, batch: int, out: Any = None) -> int:
    """Verify on ``engine``, printing each finding and a summary line; the exit code."""
    out = out or sys.stdout
    started = time.monotonic()
    tally = Tally()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not has_chain(connection):
            print(
                "audit verify: NOT checked: order_events has no hash chain (./oms migrate applies 0007)",
                file=sys.stderr,
            )
            return EXIT_NOT_CHECKED
        for finding in verify_all(connection, tally, order_id, batch):
            print(finding.line(), file=out, flush=True)
    if order_id is not None and tally.orders == 0:
        print(f"audit verify: no order {order_id}", file=sys.stderr)
        return EXIT_FINDINGS
    print(tally.summary(time.monotonic() - started), file=out)
    return EXIT_FINDINGS if tally.found else EXIT_CLEAN


def main(argv: Sequence[str]) -> int:
    """Entry point of ``./oms audit verify [--order ID] [--url URL] [--batch N]``."""
    args = _parser().parse_args(list(argv))
    if args.batch < 1:
        _parser().error("--batch must be at least 1")
    url = args.url or load_settings().infra.read_database_url
    print(f"audit verify: {make_url(url).render_as_string(hide_password=True)}", file=sys.stderr)
    engine = make_engine(url, pool_size=1)
    try:
        return run(engine, args.order, args.batch)
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
