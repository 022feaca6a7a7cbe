"""The outbox: messages leave only after the transaction that decided them commits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from common import jsonutil
from common.ids import new_id
from common.store import hot_sql
from common.store.bulk import bulk_insert, rows_parameter


@dataclass(frozen=True)
class OutboxMessage:
    """One message to publish: what the publisher needs, and the body already serialised."""

    message_id: str
    exchange: str
    routing_key: str
    type: str
    correlation_id: str | None
    # Text for our own JSON; bytes only when a received message is passed on unchanged (dead-lettering).
    body: str | bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def json(
        cls,
        exchange: str,
        routing_key: str,
        type: str,
        body: Mapping[str, Any],
        correlation_id: str | None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> OutboxMessage:
        """A message with a JSON body (Decimal-exact) and a new message id unless one is given."""
        return cls(
            message_id=message_id or new_id(),
            exchange=exchange,
            routing_key=routing_key,
            type=type,
            correlation_id=correlation_id,
            body=jsonutil.dumps(body),
            headers=dict(headers or {}),
        )


_OUTBOX_COLUMNS = (
    ("message_id", "varchar"),
    ("exchange", "varchar"),
    ("routing_key", "varchar"),
    ("type", "varchar"),
    ("correlation_id", "varchar"),
    ("headers", "jsonb"),
    ("body", "text"),
    ("claimed", "boolean"),
    ("created_at", "timestamptz"),
)
_INSERT_OUTBOX = bulk_insert("outbox", _OUTBOX_COLUMNS)
# Unclaimed rows (the API's) wake the relay at commit: pg_notify is queued with the transaction as NOTIFY is, and
# rides in the insert's own round trip.
_INSERT_OUTBOX_AND_NOTIFY = hot_sql.HotStatement(
    # The constant statement above, every value bound (:rows): nothing from input, B608 does not apply.
    f"WITH written AS ({_INSERT_OUTBOX.sql} RETURNING 1) SELECT pg_notify('oms_outbox', '')",  # nosec B608
    _INSERT_OUTBOX.fixed,
)
_MARK_SENT = hot_sql.hot(
    text("UPDATE outbox SET sent_at = now() WHERE message_id = ANY(CAST(:ids AS varchar[])) AND sent_at IS NULL")
)


class Outbox:
    """Collects the messages of one transaction and writes them as outbox rows at flush."""

    def __init__(self, connection: Connection, claimed: bool) -> None:
        self._connection = connection
        # claimed: the writer will publish these itself right after commit (stage workers);
        # unclaimed rows (the API's) are published by the relay at once.
        self._claimed = claimed
        self._pending: list[OutboxMessage] = []
        self.written: list[OutboxMessage] = []

    def add(
        self,
        exchange: str,
        routing_key: str,
        type: str,
        body: Mapping[str, Any],
        correlation_id: str | None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> OutboxMessage:
        """Queue a message for publication after commit; returns it (with its message id)."""
        message = OutboxMessage.json(exchange, routing_key, type, body, correlation_id, headers, message_id)
        self._pending.append(message)
        return message

    def flush(self) -> None:
        """Insert the queued rows (one statement for the lot)."""
        if not self._pending:
            return
        rows = [
            {
                "message_id": m.message_id,
                "exchange": m.exchange,
                "routing_key": m.routing_key,
                "type": m.type,
                "correlation_id": m.correlation_id,
                "headers": dict(m.headers),
                "body": m.body if isinstance(m.body, str) else m.body.decode("utf-8"),
                "claimed": self._claimed,
                "created_at": m.created_at,
            }
            for m in self._pending
        ]
        # Unclaimed rows also wake the relay at commit, so the API's writes go out at once.
        statement = _INSERT_OUTBOX if self._claimed else _INSERT_OUTBOX_AND_NOTIFY
        hot_sql.execute(self._connection, statement, rows_parameter(rows, _OUTBOX_COLUMNS))
        self.written.extend(self._pending)
        self._pending.clear()

    def discard(self) -> None:
        """Forget what this transaction queued (it rolled back)."""
        self._pending.clear()
        self.written.clear()


def mark_sent(connection: Connection, message_ids: Iterable[str]) -> None:
    """Record that these outbox rows were published and confirmed."""
    ids = list(message_ids)
    if ids:
        hot_sql.execute(connection, _MARK_SENT, {"ids": ids})
