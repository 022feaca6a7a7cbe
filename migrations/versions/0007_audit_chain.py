"""The audit trail's hash chain: order_events.prev_hash and hash, orders.last_event_hash, purged_order_chains.

Each ``order_events`` row carries the hash of the order's previous event and its own hash over that and its
fields (``common/store/event_chain.py`` says how); the order's row keeps the last hash (its chain head), so the
writer chains the next event without reading the previous one. ``purged_order_chains`` records what retention
dropped of an order's chain (its sequences up to ``last_sequence``, the last hash), so ``./oms audit verify``
can tell a recorded purge from a removal.

The rows already there are chained here, order by order in batches (the same code the writer uses), then the
columns become NOT NULL: a writer that does not chain fails at once instead of leaving rows the chain cannot
vouch for. What was there before is vouched for as it was found (a gap in old sequences is not reported).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from common import jsonutil
from common.store.event_chain import GENESIS, canonical, link, to_bytea

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BATCH_ORDERS = 2000

UPGRADE = """
ALTER TABLE orders ADD COLUMN last_event_hash BYTEA;
ALTER TABLE order_events ADD COLUMN prev_hash BYTEA, ADD COLUMN hash BYTEA;
CREATE TABLE purged_order_chains (
    order_id VARCHAR(36) PRIMARY KEY REFERENCES orders(id),
    last_sequence INTEGER NOT NULL CHECK (last_sequence > 0),
    last_event_hash BYTEA NOT NULL,
    retention_days INTEGER NOT NULL,
    cutoff TIMESTAMPTZ NOT NULL,
    purged_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    purged_by VARCHAR(100) NOT NULL DEFAULT current_user
);
COMMENT ON TABLE purged_order_chains IS
    'What retention deleted of an order''s order_events chain: sequences 1..last_sequence, the last hash';
"""

CONSTRAIN = """
ALTER TABLE order_events ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN hash SET NOT NULL,
    ADD CONSTRAINT chk_order_events_hash_length CHECK (octet_length(prev_hash) = 32 AND octet_length(hash) = 32);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS purged_order_chains;
ALTER TABLE order_events DROP CONSTRAINT IF EXISTS chk_order_events_hash_length;
ALTER TABLE order_events DROP COLUMN IF EXISTS hash, DROP COLUMN IF EXISTS prev_hash;
ALTER TABLE orders DROP COLUMN IF EXISTS last_event_hash;
"""

_NEXT_ORDERS = sa.text("SELECT id FROM orders WHERE id > :after ORDER BY id LIMIT :limit")
_EVENTS = sa.text(
    "SELECT id, order_id, sequence, type, payload::text AS payload_json, user_id, timestamp, correlation_id, "
    "message_id FROM order_events WHERE order_id = ANY(:ids) ORDER BY order_id, sequence"
)
_SET_EVENT_HASHES = sa.text(
    "UPDATE order_events AS e SET prev_hash = r.prev_hash, hash = r.hash "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(id varchar, prev_hash bytea, hash bytea) "
    "WHERE e.id = r.id AND e.id = ANY(:keys)"
)
_SET_HEADS = sa.text(
    "UPDATE orders AS o SET last_event_hash = r.head "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(id varchar, head bytea) "
    "WHERE o.id = r.id AND o.id = ANY(:keys)"
)


def _chain_batch(connection: Any, order_ids: list[str]) -> None:
    events: list[dict[str, str]] = []
    heads: dict[str, bytes] = {}
    for row in connection.execute(_EVENTS, {"ids": order_ids}).mappings():
        previous = heads.get(row["order_id"], GENESIS)
        digest = link(
            previous,
            canonical(
                id=row["id"],
                order_id=row["order_id"],
                sequence=row["sequence"],
                type=row["type"],
                payload_json=row["payload_json"],
                user_id=row["user_id"],
                timestamp=row["timestamp"],
                correlation_id=row["correlation_id"],
                message_id=row["message_id"],
            ),
        )
        events.append({"id": row["id"], "prev_hash": to_bytea(previous), "hash": to_bytea(digest)})
        heads[row["order_id"]] = digest
    if events:
        connection.execute(
            _SET_EVENT_HASHES, {"rows": jsonutil.dumps(events), "keys": [event["id"] for event in events]}
        )
        head_rows = [{"id": order_id, "head": to_bytea(head)} for order_id, head in heads.items()]
        connection.execute(_SET_HEADS, {"rows": jsonutil.dumps(head_rows), "keys": list(heads)})


def upgrade() -> None:
    op.execute(UPGRADE)
    connection = op.get_bind()
    after = ""
    while True:
        ids = list(connection.execute(_NEXT_ORDERS, {"after": after, "limit": BATCH_ORDERS}).scalars())
        if not ids:
            break
        _chain_batch(connection, ids)
        after = ids[-1]
    op.execute(CONSTRAIN)


def downgrade() -> None:
    op.execute(DOWNGRADE)
