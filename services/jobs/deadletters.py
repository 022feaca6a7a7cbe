"""Dead-letter queues: list them, show their messages with the reasons, replay or purge a selection.

Used by ``oms dlq`` and by the ``replay_dead_letters`` job alike. One pass over a queue takes at most the
number of messages the queue held when the pass began (``basic.get``, manual acks), so a pass ends even though
messages it leaves alone stay in the queue. Messages a pass leaves alone are held unacknowledged until the end
and then handed back (nack, requeue), so the pass never sees one twice.

A replayed message goes back to the exchange and routing key it was first published to, with the same
``message_id`` (the stage's inbox makes a second application a no-op), with publisher confirms and
``mandatory`` (an unroutable replay fails instead of vanishing). Order of events per message: republish,
confirmed; an audit row saying "acked, not yet checked" committed; the ack; then, at the end of the pass,
the check that it is gone.
Killed anywhere, the broker gives the unacked message back to the dead-letter queue: nothing is lost, and a
message republished but not yet acked is at worst replayed again, which its stage's inbox absorbs.

An ack is not a removal. AMQP never answers an ack, and a quorum queue can drop acks that arrive just before
their channel closes (rabbitmq-server #10327): the messages come back, while the tool had counted them gone.
So a pass never takes an ack's word for it. After each batch of acks it makes a synchronous round trip on the
same channel (``basic.qos``: the channel has then handled every ack); at the end it hands back what it held,
closes the channel, waits until the queue's depth settles (a quorum queue requeues asynchronously), and reads
the whole queue again. Where the acks went: a quorum queue's client in the channel stashes settlements
once 32 of its commands await the queue's answer, and sends them when answers come; the channel closing first
drops the stash, and the queue hands those messages back. So the check acks again, in the channel it reads the
queue with, every copy the pass acked that is still there: at most ``REACK_LIMIT`` per read, below the stash's
threshold, so those acks reach the queue before that channel closes. It reads again after each such round, until
a read finds none of them; or, after ``STALLED_ROUNDS`` rounds in a row that removed none, or ``CHECK_SECONDS``,
one last read without acks says what stays. How many acks the broker drops varies with its load, so the rounds
go on while they make progress rather than for a fixed count. Only a message whose id is no longer there counts
as removed: its row becomes PURGED or REPLAYED. One still there after the last read is reported as not removed;
its row is deleted (a purge did nothing) or says why it failed (a replay did republish it; the copy left in the
dead-letter queue is absorbed by the stage's inbox if replayed again). A copy that this very replay sent back and
its stage dead-lettered again carries this run's ``x-oms-replay-run`` header and is not mistaken for the original.

The row written before the ack is a FAILED row whose detail is ``UNCHECKED`` (the table's CHECK allows
REPLAYED, PURGED and FAILED only): one left like that is a pass killed between its ack and its check, which
claims nothing. The next pass over the queue settles such rows first, by the same test: gone from the queue,
removed; still there, not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import AMQPError
from sqlalchemy import Engine, delete, insert, select, update

from common import jsonutil
from common.ids import new_id
from common.logging import log_context
from common.messages.headers import (
    DEAD_LETTERED_AT_HEADER,
    ERROR_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REPLAY_RUN_HEADER,
    REPLAYED_AT_HEADER,
    STAGE_HEADER,
)
from common.messaging.connection import AmqpUrls, connect_once
from common.messaging.deadletter import republishable
from common.messaging.envelope import body_digest, message_id_of
from common.messaging.publisher import Outgoing, Publisher
from common.messaging.topology import STAGE_QUEUES, VENUE_QUEUE
from common.store import tables as core_tables
from common.store.tables import dlq_replays

log = logging.getLogger(__name__)

# The name of the connection every pass opens (the management UI's connection list).
CONNECTION_NAME = "oms.dlq"
# Headers that describe the dead-lettering; a replayed message starts clean (the audit table keeps the story).
_DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        ERROR_HEADER,
        STAGE_HEADER,
        ORIGINAL_EXCHANGE_HEADER,
        ORIGINAL_ROUTING_KEY_HEADER,
        DEAD_LETTERED_AT_HEADER,
    }
)
# The stage runtime's own words for a delivery it could not read (common/runtime/stage.py ``decode``).
_INVALID_PREFIXES = (
    "invalid body",
    "invalid properties",
    "body is not JSON",
    "body is not a JSON object",
    "body refused",
    "body too large",
    "body could not be decoded",
    "no schema for routing key",
)
# Control characters shown escaped (C0, DEL, C1): a message must not drive the operator's terminal.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


def dead_letter_queues() -> list[str]:
    """Every dead-letter queue of the system: one per stage, and the simulated venue's."""
    return [queue.dead_letter_name for queue in STAGE_QUEUES.values()] + [VENUE_QUEUE.dead_letter_name]


def queue_for_stage(stage: str) -> str:
    """The dead-letter queue of ``stage`` (``intake`` -> ``oms.intake.dlq``; ``venue_sim`` -> the venue's)."""
    if stage == VENUE_QUEUE.stage:
        return VENUE_QUEUE.dead_letter_name
    if stage not in STAGE_QUEUES:
        raise ValueError(f"unknown stage {stage!r} (one of {', '.join([*STAGE_QUEUES, VENUE_QUEUE.stage])})")
    return STAGE_QUEUES[stage].dead_letter_name


# ------------------------------------------------------------------------------------------------ messages


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", errors="replace")
    return str(value)


def printable(text: str) -> str:
    """``text`` safe to print and to store in Postgres text: control characters and lone surrogates escaped."""
    escaped = text.translate(_ESCAPES)
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def _storable(value: Any, limit: int) -> str | None:
    return None if value is None else printable(_text(value))[:limit]


def _readable_text(body: bytes) -> str | None:
    """The body as text when it is UTF-8 with no control characters but tab, CR and LF; else None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any((ord(ch) < 0x20 and ch not in "\t\n\r") or 0x7F <= ord(ch) < 0xA0 for ch in text):
        return None
    return text


def _parse(body: bytes) -> Any:
    """The body as JSON, or None when it is not JSON within the limits the stages apply (never raises)."""
    try:
        return jsonutil.loads(body, max_bytes=jsonutil.MAX_BODY_BYTES)
    except Exception:  # any bytes at all can sit in a dead-letter queue
        return None


def to_plain(value: Any) -> Any:
    """Header values as JSON-friendly values (x-death holds tables, lists, timestamps and bytes)."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return _text(value)
    return value


@dataclass(frozen=True)
class DeadLetterMessage:
    """One dead-lettered message and what is known about why and from where."""

    queue: str
    message_id: str
    type: str | None
    correlation_id: str | None
    order_id: str | None
    reason: str  # invalid | refused | delivery_limit | rejected | expired | maxlen | unknown
    detail: str
    stage: str | None
    original_exchange: str | None
    original_routing_key: str | None
    dead_lettered_at: str | None
    deaths: int
    headers: dict[str, Any]
    body: bytes = field(repr=False)

    @property
    def body_format(self) -> str:
        """``json`` (JSON within the stages' limits), ``text`` (other readable UTF-8) or ``bytes`` (anything else)."""
        text = _readable_text(self.body)
        if text is None:
            return "bytes"
        return "json" if _parse(self.body) is not None or text.strip() == "null" else "text"

    @property
    def body_text(self) -> str:
        """The body as it can be shown: the text itself when readable, else the escaped bytes (``b'...'``)."""
        return self.body_preview(None)

    def body_preview(self, max_chars: int | None) -> str:
        """``body_text`` cut at ``max_chars`` (None or 0: whole), the cut saying how many bytes there are."""
        text = _readable_text(self.body)
        if text is None:
            # Escaped bytes take up to four characters each: escape no more than can be shown.
            head = self.body if not max_chars else self.body[: max_chars + 1]
            text = repr(head)
            if max_chars and len(self.body) > max_chars and len(text) <= max_chars:
                text += " "  # cut below all the same, so the length is said
        if max_chars and len(text) > max_chars:
            return text[:max_chars] + f"... ({len(self.body)} bytes)"
        return text

    def as_dict(self, body_chars: int | None = None) -> dict[str, Any]:
        """JSON-friendly form for ``oms dlq show --json``."""
        data = asdict(self)
        data["headers"] = to_plain(self.headers)
        data["body"] = self.body_preview(body_chars)
        data["body_format"] = self.body_format
        data["body_bytes"] = len(self.body)
        return data


def _deaths(headers: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    value = headers.get("x-death")
    return [d for d in value if isinstance(d, Mapping)] if isinstance(value, list | tuple) else []


def _count(death: Mapping[str, Any]) -> int:
    # The broker writes an integer; anyone can publish straight into a dead-letter queue with anything.
    try:
        return max(int(death.get("count", 1) or 1), 1)
    except (TypeError, ValueError, OverflowError):
        return 1


def _stage_of_queue(queue: str) -> str | None:
    # Stage queues are ``oms.<stage>``; the venue's is ``venue_sim.orders``.
    if queue.startswith("oms.") and queue.count(".") == 1:
        return queue.removeprefix("oms.")
    return queue.split(".", 1)[0] if queue else None


def _order_id_of(body: bytes) -> str | None:
    data = _parse(body)
    if isinstance(data, dict):
        value = data.get("orderId")
        return None if value is None else printable(_text(value))[:200]
    return None


def original_destination(headers: Mapping[str, Any]) -> tuple[str, str] | None:
    """Where the message was first published: the OMS's own headers, else the broker's oldest x-death."""
    exchange, routing_key = headers.get(ORIGINAL_EXCHANGE_HEADER), headers.get(ORIGINAL_ROUTING_KEY_HEADER)
    if exchange is not None and routing_key:
        return _text(exchange), _text(routing_key)
    deaths = _deaths(headers)
    if deaths:
        first = deaths[-1]  # x-death lists the most recent death first
        keys = first.get("routing-keys") or []
        if keys:
            return _text(first.get("exchange", "")), _text(keys[0])
    return None


def describe_safely(
    queue: str, message: AbstractIncomingMessage, failures: Mapping[str, str] | None = None
) -> DeadLetterMessage:
    """``describe``, or, for a message it cannot read, a description that still lets it be shown and purged."""
    try:
        return describe(queue, message, failures)
    except Exception as exc:
        body = bytes(message.body or b"")
        headers = message.headers
        return DeadLetterMessage(
            queue=queue,
            message_id=_text(message.message_id) if message.message_id else "sha256:" + body_digest(body),
            type=None if message.type is None else _text(message.type),
            correlation_id=None if message.correlation_id is None else _text(message.correlation_id),
            order_id=None,
            reason="unknown",
            detail=f"could not read the message: {type(exc).__name__}: {exc}",
            stage=None,
            original_exchange=None,
            original_routing_key=None,
            dead_lettered_at=None,
            deaths=0,
            headers=dict(headers) if isinstance(headers, Mapping) else {},
            body=body,
        )


def describe(
    queue: str, message: AbstractIncomingMessage, failures: Mapping[str, str] | None = None
) -> DeadLetterMessage:
    """Read a dead-lettered delivery: ids, the reason (the OMS's header or the broker's x-death), the origin.

    ``failures`` maps message ids to the last handler error (``message_failures``) for messages the broker
    dead-lettered after too many failed deliveries.
    """
    headers = dict(message.headers or {})
    message_id = message_id_of(message)
    error = headers.get(ERROR_HEADER)
    deaths = _deaths(headers)
    stage = _text(headers[STAGE_HEADER]) if headers.get(STAGE_HEADER) else None
    if error:
        detail = _text(error)
        reason = "invalid" if detail.startswith(_INVALID_PREFIXES) else "refused"
    elif deaths:
        latest = deaths[0]
        reason = _text(latest.get("reason", "unknown"))
        dead_queue = _text(latest.get("queue", ""))
        stage = stage or _stage_of_queue(dead_queue)
        detail = f"{reason} in {dead_queue}"
        last_error = (failures or {}).get(message_id)
        if last_error:
            detail += f"; last error: {last_error}"
    else:
        reason, detail = "unknown", "no x-death and no x-oms-error header"
    destination = original_destination(headers)
    dead_at = headers.get(DEAD_LETTERED_AT_HEADER)
    if dead_at is None and deaths and isinstance(deaths[0].get("time"), datetime):
        dead_at = deaths[0]["time"]
    dead_at_text = None if dead_at is None else to_plain(dead_at)
    return DeadLetterMessage(
        queue=queue,
        message_id=message_id,
        type=message.type,
        correlation_id=message.correlation_id,
        order_id=_order_id_of(message.body),
        reason=reason,
        detail=detail,
        stage=stage,
        original_exchange=destination[0] if destination else None,
        original_routing_key=destination[1] if destination else None,
        dead_lettered_at=None if dead_at_text is None else _text(dead_at_text),
        deaths=sum(_count(d) for d in deaths),
        headers=headers,
        body=message.body,
    )


@dataclass(frozen=True)
class Selection:
    """Which messages of a queue to act on; every given filter must match (none given: all)."""

    reason: str | None = None  # a reason code, or text found in the reason's detail (case-insensitive)
    type: str | None = None
    order_id: str | None = None  # the correlation id or the body's orderId
    message_ids: frozenset[str] = frozenset()
    limit: int | None = None

    def matches(self, message: DeadLetterMessage) -> bool:
        """True when the message passes every filter (the limit is counted by the caller)."""
        # An id is also found as ``show`` prints it (escaped): an id holding NUL cannot be typed on a command line.
        if self.message_ids and not {message.message_id, printable(message.message_id)} & self.message_ids:
            return False
        if self.type and (message.type or "").lower() != self.type.lower():
            return False
        if self.order_id and self.order_id not in (message.correlation_id, message.order_id):
            return False
        if self.reason:
            wanted = self.reason.lower()
            if wanted != message.reason.lower() and wanted not in message.detail.lower():
                return False
        return True

    def as_dict(self) -> dict[str, Any]:
        """The filters, for the audit rows."""
        data: dict[str, Any] = {
            "reason": self.reason,
            "type": self.type,
            "order_id": self.order_id,
            "limit": self.limit,
        }
        if self.message_ids:
            data["message_ids"] = sorted(self.message_ids)
        return {k: v for k, v in data.items() if v is not None}


# ------------------------------------------------------------------------------------------------ broker side


async def queue_depth(connection: AbstractConnection, queue: str) -> int | None:
    """Messages ready in ``queue``; None when it does not exist (a passive declare, on a channel of its own)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except AMQPError:
        return None  # the broker closed the channel: no such queue
    finally:
        if not channel.is_closed:
            await channel.close()
    count = declared.declaration_result.message_count
    return int(count or 0)


async def queue_depths(connection: AbstractConnection, queues: Iterable[str]) -> dict[str, int | None]:
    """Depth of each queue (None: the queue does not exist)."""
    return {queue: await queue_depth(connection, queue) for queue in queues}


async def _take(channel: AbstractChannel, queue: str, depth: int) -> AsyncIterator[AbstractIncomingMessage]:
    source = await channel.get_queue(queue, ensure=False)
    for _ in range(depth):
        message = await source.get(no_ack=False, fail=False, timeout=30)
        if message is None:
            return
        yield message


async def _release(held: Sequence[AbstractIncomingMessage]) -> None:
    """Hand back every held message in one frame (nack, multiple, requeue).

    Each pass thus counts as one more delivery of the messages it leaves alone; dead-letter queues are declared
    without a delivery limit, so that is harmless (RabbitMQ 4 gives quorum queues a default limit of 20: set
    the dead-letter queues' ``delivery-limit`` to -1 by policy there).
    """
    if held:
        last = max(held, key=lambda m: m.delivery_tag or 0)
        await last.nack(multiple=True, requeue=True)


def _failures(engine: Engine | None, messages: Sequence[AbstractIncomingMessage]) -> dict[str, str]:
    if engine is None or not messages:
        return {}
    # An id Postgres cannot compare (NUL, too long) has no failure row: leave it out rather than fail the query.
    ids = [i for i in (message_id_of(m) for m in messages) if len(i) <= 100 and printable(i) == i]
    if not ids:
        return {}
    failures = core_tables.message_failures
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(failures.c.message_id, failures.c.error).where(failures.c.message_id.in_(ids))
            )
            return {row.message_id: row.error for row in rows}
    except Exception as exc:  # the reasons are a nicety of ``show``; the broker's copy is what matters
        log.warning("could not read message_failures", extra={"error": repr(exc)})
        return {}


async def _take_described(
    channel: AbstractChannel, queue: str, depth: int, engine: Engine | None, chunk: int = 100
) -> AsyncIterator[tuple[AbstractIncomingMessage, DeadLetterMessage]]:
    """Take up to ``depth`` messages, each with its description (the last handler errors read per chunk)."""
    pending: list[AbstractIncomingMessage] = []

    async def described() -> list[tuple[AbstractIncomingMessage, DeadLetterMessage]]:
        failures = await asyncio.to_thread(_failures, engine, pending)
        return [(m, describe_safely(queue, m, failures)) for m in pending]

    async for message in _take(channel, queue, depth):
        pending.append(message)
        if len(pending) >= chunk:
            for pair in await described():
                yield pair
            pending = []
    if pending:
        for pair in await described():
            yield pair


async def show(
    amqp_url: AmqpUrls, queue: str, selection: Selection, engine: Engine | None = None
) -> tuple[int | None, list[DeadLetterMessage]]:
    """The queue's depth and its messages that match ``selection`` (nothing is removed)."""
    connection = await connect_once(amqp_url, CONNECTION_NAME)
    try:
        depth = await queue_depth(connection, queue)
        if not depth:
            return depth, []
        channel = await connection.channel()
        held: list[AbstractIncomingMessage] = []
        matching: list[DeadLetterMessage] = []
        try:
            async for message, item in _take_described(channel, queue, depth, engine):
                held.append(message)
                if selection.matches(item):
                    matching.append(item)
                    if selection.limit is not None and len(matching) >= selection.limit:
                        break
            return depth, matching
        finally:
            await _release(held)
            await channel.close()
    finally:
        await connection.close()


# ------------------------------------------------------------------------------------------------ replay, purge


@dataclass
class PassReport:
    """What one replay or purge pass did."""

    run_id: str
    queue: str
    action: str
    dry_run: bool
    depth: int = 0
    examined: int = 0
    selected: int = 0
    done: int = 0  # acked and seen gone from the queue afterwards
    failed: int = 0  # left in the queue: republish failed, or acked but still there
    not_removed: int = 0  # of ``failed``: acked, yet found in the queue when it was read again
    messages: list[DeadLetterMessage] = field(default_factory=list)  # the selected ones (dry run: the plan)
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A summary without the message bodies (job results, ``--json`` output)."""
        return {
            "run_id": self.run_id,
            "queue": self.queue,
            "action": self.action,
            "dry_run": self.dry_run,
            "depth": self.depth,
            "examined": self.examined,
            "selected": self.selected,
            "done": self.done,
            "failed": self.failed,
            "not_removed": self.not_removed,
            "errors": self.errors,
        }


# Called with the number of messages just examined (a progress bar's ``update``).
Progress = Callable[[int], None]


def _audit_rows(
    report: PassReport, actor: str, selection: Selection, items: Sequence[tuple[DeadLetterMessage, str, str | None]]
) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "run_id": report.run_id,
            "action": report.action,
            # Whatever the message carried (NUL, lone surrogates, over-long ids), the audit row must be writable.
            "actor": printable(actor)[:100],
            "queue": printable(report.queue)[:255],
            "message_id": printable(m.message_id)[:100],
            "message_type": _storable(m.type, 100),
            "correlation_id": _storable(m.correlation_id, 100),
            "reason": printable(f"{m.reason}: {m.detail}")[:4000],
            "target_exchange": _storable(m.original_exchange, 255),
            "target_routing_key": _storable(m.original_routing_key, 255),
            "outcome": outcome,
            "detail": _storable(detail, 4000),
            "filters": {key: _plain_filter(value) for key, value in selection.as_dict().items()},
            "created_at": now,
        }
        for m, outcome, detail in items
    ]


def _plain_filter(value: Any) -> Any:
    # JSONB refuses \u0000 as text does.
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_plain_filter(v) for v in value]
    return value


def _check_database(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(select(dlq_replays.c.id).limit(1)).all()


def _write_audit(engine: Engine, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the rows; returns their ids in the order of ``rows``."""
    if not rows:
        return []
    with engine.begin() as connection:
        result = connection.execute(insert(dlq_replays).returning(dlq_replays.c.id, sort_by_parameter_order=True), rows)
        return [int(row_id) for row_id in result.scalars()]


def _finish_audit(engine: Engine, removed: dict[int, str], kept: dict[int, str | None]) -> None:
    """Turn UNCHECKED rows into what happened: ``removed`` row id -> outcome; ``kept`` row id -> FAILED detail,
    or None to delete the row (a purge that removed nothing has nothing to record)."""
    with engine.begin() as connection:
        for outcome in sorted(set(removed.values())):
            ids = [row_id for row_id, o in removed.items() if o == outcome]
            connection.execute(
                update(dlq_replays).where(dlq_replays.c.id.in_(ids)).values(outcome=outcome, detail=None)
            )
        dropped = [row_id for row_id, detail in kept.items() if detail is None]
        if dropped:
            connection.execute(delete(dlq_replays).where(dlq_replays.c.id.in_(dropped)))
        for row_id, detail in kept.items():
            if detail is not None:
                connection.execute(
                    update(dlq_replays).where(dlq_replays.c.id == row_id).values(outcome="FAILED", detail=detail)
                )


def replay_message(message: AbstractIncomingMessage, run_id: str) -> aio_pika.Message:
    """The message as it was first published: same id, body and properties, without the death headers."""
    headers = {k: republishable(v) for k, v in (message.headers or {}).items() if k not in _DEATH_HEADERS}
    headers[REPLAYED_AT_HEADER] = datetime.now(UTC).isoformat()
    headers[REPLAY_RUN_HEADER] = run_id
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type or "application/json",
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


# How long the check after a pass waits for the queue's depth to settle, and how it samples it. A quorum queue
# requeues what a closed channel held asynchronously: the depth is read until it holds at least what the pass
# left in the queue and stays the same over a few reads.
SETTLE_TIMEOUT = 10.0
SETTLE_INTERVAL = 0.1
SETTLE_READS = 3
# The check's re-acks per read of the queue: below the 32 unanswered commands after which a quorum queue's client
# stashes settlements instead of sending them (rabbit_fifo_client's soft limit), so none is stashed and dropped.
REACK_LIMIT = 24
# How long the check goes on reading the queue and acking again what is still there; a read that finds none of
# the pass's acked messages ends it sooner. With both cores busy, a pass over 240 messages once had 36 more acks
# dropped than four rounds of REACK_LIMIT could send again (docs/design.md, Session 14).
CHECK_SECONDS = 30.0
# Rounds of re-acks in a row that left as many of them in the queue as before, after which the check stops acking
# (an ack that never takes: the next read is the last).
STALLED_ROUNDS = 2
# The row of a message about to be acked, until the check says what happened (module doc).
UNCHECKED = "acked; not yet checked that it left the queue (the pass stopped before its check if this stays)"


@dataclass
class _Acked:
    """A message the pass acked, and its audit row (FAILED, UNCHECKED) that waits for the check."""

    item: DeadLetterMessage
    audit_id: int


class _Pass:
    """The machinery shared by replay and purge: take, select, act in batches, audit, ack, release, check."""

    def __init__(
        self,
        connection: AbstractConnection,
        engine: Engine,
        queue: str,
        selection: Selection,
        actor: str,
        action: str,
        dry_run: bool,
        batch_size: int,
        progress: Progress | None,
    ) -> None:
        self.connection = connection
        self.engine = engine
        self.selection = selection
        self.actor = actor
        self.dry_run = dry_run
        self.batch_size = max(batch_size, 1)
        self.progress = progress
        self.report = PassReport(run_id=new_id(), queue=queue, action=action, dry_run=dry_run)
        # Replays go out on the publisher's confirming channel; the pass takes and acks on a channel of its own.
        self.publisher = Publisher(connection)
        self.seen: Counter[str] = Counter()  # ids of every message the pass took, with how many copies
        self.acked: list[_Acked] = []

    @property
    def _done_outcome(self) -> str:
        return "REPLAYED" if self.report.action == "REPLAY" else "PURGED"

    async def run(self, depth: int) -> PassReport:
        report = self.report
        report.depth = depth
        channel = await self.connection.channel()
        held: list[AbstractIncomingMessage] = []
        batch: list[tuple[AbstractIncomingMessage, DeadLetterMessage]] = []
        try:
            async for message, item in _take_described(channel, report.queue, depth, self.engine):
                report.examined += 1
                self.seen[item.message_id] += 1
                if self.progress is not None:
                    self.progress(1)
                wanted = self.selection.limit is None or report.selected < self.selection.limit
                if not wanted or not self.selection.matches(item):
                    held.append(message)
                    continue
                report.selected += 1
                report.messages.append(item)
                if self.dry_run:
                    held.append(message)
                    continue
                batch.append((message, item))
                if len(batch) >= self.batch_size:
                    held.extend(await self._settle(channel, batch))
                    batch = []
            if batch:
                held.extend(await self._settle(channel, batch))
            await _release(held)
            held = []
        finally:
            if not channel.is_closed:
                await _release(held)
                await channel.close()
            if self.acked:
                # Also when the pass failed half-way: what it acked so far is checked and audited as it is.
                await self._check()
        return report

    async def _publish(
        self, batch: Sequence[tuple[AbstractIncomingMessage, DeadLetterMessage]]
    ) -> list[BaseException | None]:
        """Republish each message where it was first published (confirmed, mandatory); per message, None or
        why not."""
        errors: list[BaseException | None] = [None] * len(batch)
        outgoing: list[Outgoing] = []
        sent: list[int] = []
        for index, (message, item) in enumerate(batch):
            if item.original_routing_key is None or item.original_exchange is None:
                errors[index] = LookupError("no original exchange/routing key in its headers")
                continue
            outgoing.append(
                Outgoing(item.original_exchange, item.original_routing_key, replay_message(message, self.report.run_id))
            )
            sent.append(index)
        for index, error in zip(sent, await self.publisher.send(outgoing), strict=True):
            errors[index] = error
        return errors

    async def _settle(
        self, channel: AbstractChannel, batch: Sequence[tuple[AbstractIncomingMessage, DeadLetterMessage]]
    ) -> list[AbstractIncomingMessage]:
        """Act on a batch; returns the messages to hand back (their republish failed)."""
        report = self.report
        if report.action == "REPLAY":
            errors = await self._publish(batch)
        else:
            errors = [None] * len(batch)
        audit: list[tuple[DeadLetterMessage, str, str | None]] = []
        for (_, item), error in zip(batch, errors, strict=True):
            if error is None:
                audit.append((item, "FAILED", UNCHECKED))
            else:
                detail = f"{type(error).__name__}: {error}"[:1000]
                audit.append((item, "FAILED", detail))
                report.errors[item.message_id] = detail
        # The row is committed before the ack: a message gone from the queue always has its record,
        # even when the pass is killed before its check turns the row into what happened.
        row_ids = await asyncio.to_thread(
            _write_audit, self.engine, _audit_rows(report, self.actor, self.selection, audit)
        )
        keep: list[AbstractIncomingMessage] = []
        for (message, item), error, row_id in zip(batch, errors, row_ids, strict=True):
            if error is None:
                await message.ack()
                self.acked.append(_Acked(item, row_id))
            else:
                keep.append(message)
                report.failed += 1
                with log_context(message_id=item.message_id, correlation_id=item.correlation_id):
                    log.warning("dead letter not replayed", extra={"queue": report.queue, "error": error})
        if len(keep) < len(batch):
            # A synchronous round trip on the same channel: once it answers, the channel has handled every ack
            # sent before it (acks themselves are never answered).
            await channel.set_qos(prefetch_count=0)
        return keep

    async def _check(self) -> None:
        """Read the queue again; count as done only the acked messages that are gone, and audit only those."""
        report = self.report
        acked_per_id = Counter(a.item.message_id for a in self.acked)
        floor = report.depth - len(self.acked)
        reacked = 0

        def still_there_in(left: Counter[str]) -> Counter[str]:
            # Copies of an id the pass did not take (arrived meanwhile) are not held against it; a copy it acked
            # and that is still there is, whichever physical copy it is.
            return Counter(
                {
                    message_id: min(count, max(0, left[message_id] - (self.seen[message_id] - count)))
                    for message_id, count in acked_per_id.items()
                }
            )

        deadline = asyncio.get_running_loop().time() + CHECK_SECONDS
        last = False
        stalled = 0
        previous: int | None = None
        while True:
            left, taken = await _remaining_ids(
                self.connection, report.queue, report.run_id, floor, None if last else still_there_in
            )
            still_there = still_there_in(left)
            if not taken:  # so this read found none of them still there, or it was the last
                break
            reacked += taken.total()
            floor -= taken.total()
            count = still_there.total()
            stalled = stalled + 1 if previous is not None and count >= previous else 0
            previous = count
            last = stalled >= STALLED_ROUNDS or asyncio.get_running_loop().time() >= deadline
        if reacked:
            log.info(
                "dead letters acked again: the broker had handed them back",
                extra={"queue": report.queue, "run_id": report.run_id, "reacked": reacked},
            )
        removed: dict[int, str] = {}
        kept: dict[int, str | None] = {}
        for acked in reversed(self.acked):  # the last copies acked are the ones reported not removed
            item = acked.item
            with log_context(message_id=item.message_id, correlation_id=item.correlation_id, order_id=item.order_id):
                if still_there.get(item.message_id, 0) > 0:
                    still_there[item.message_id] -= 1
                    report.failed += 1
                    report.not_removed += 1
                    if report.action == "REPLAY":
                        detail = "republished (confirmed), but still in the dead-letter queue after its ack"
                        kept[acked.audit_id] = detail
                    else:
                        detail = "acked, but still in the queue after its ack: not removed"
                        kept[acked.audit_id] = None
                    report.errors[item.message_id] = detail
                    log.warning("dead letter acked but not removed", extra={"queue": report.queue, "error": detail})
                else:
                    removed[acked.audit_id] = self._done_outcome
                    report.done += 1
                    log.info(
                        "dead letter %s",
                        self._done_outcome.lower(),
                        extra={"queue": report.queue, "run_id": report.run_id, "reason": item.reason},
                    )
        await asyncio.to_thread(_finish_audit, self.engine, removed, kept)


async def _settled_depth(connection: AbstractConnection, queue: str, floor: int) -> int:
    """The queue's depth once it holds at least ``floor`` messages and stays put over a few reads (or at the
    deadline: someone else may be taking messages too)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT
    reads: list[int] = []
    while True:
        depth = await queue_depth(connection, queue)
        if depth is None:
            raise LookupError(f"queue {queue!r} disappeared during the pass")
        reads = [*reads[-(SETTLE_READS - 1) :], depth]
        if (len(reads) == SETTLE_READS and len(set(reads)) == 1 and depth >= floor) or loop.time() >= deadline:
            return depth
        await asyncio.sleep(SETTLE_INTERVAL)  # polling the broker: there is no event to wait for


def _key(message: AbstractIncomingMessage) -> tuple[str, str]:
    return message_id_of(message), _text((message.headers or {}).get(REPLAY_RUN_HEADER, ""))


async def _queued(
    connection: AbstractConnection,
    queue: str,
    floor: int,
    to_remove: Callable[[Counter[tuple[str, str]]], Counter[tuple[str, str]]] | None = None,
) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """What ``queue`` holds now: (message id, the ``x-oms-replay-run`` it carries or "") with how many copies;
    and what of it was acked here: ``to_remove`` is given what was found and says which copies to ack (at most
    ``REACK_LIMIT`` are). Every other message is handed back.

    ``floor``: what the queue holds at least once everything a pass handed back is in it again (its depth at
    the start less what it acked, unless someone else takes messages meanwhile)."""
    await _settled_depth(connection, queue, max(floor, 0))
    channel = await connection.channel()
    held: list[AbstractIncomingMessage] = []
    found: Counter[tuple[str, str]] = Counter()
    acked: Counter[tuple[str, str]] = Counter()
    try:
        source = await channel.get_queue(queue, ensure=False)
        while (message := await source.get(no_ack=False, fail=False, timeout=30)) is not None:
            held.append(message)
            found[_key(message)] += 1
        wanted = to_remove(found) if to_remove is not None else Counter()
        kept: list[AbstractIncomingMessage] = []
        for message in held:
            key = _key(message)
            if acked[key] < wanted[key] and acked.total() < REACK_LIMIT:
                await message.ack()
                acked[key] += 1
            else:
                kept.append(message)
        held = kept
        return found, acked
    finally:
        if not channel.is_closed:
            await _release(held)
            await channel.set_qos(prefetch_count=0)  # the acks and the nack handled before the close
            await channel.close()


async def _remaining_ids(
    connection: AbstractConnection,
    queue: str,
    run_id: str,
    floor: int,
    to_remove: Callable[[Counter[str]], Counter[str]] | None = None,
) -> tuple[Counter[str], Counter[str]]:
    """Ids of the messages in ``queue`` now (how many copies of each), leaving out copies this replay run sent
    back that were dead-lettered again; and the copies of them acked here (``to_remove``, as in ``_queued``)."""

    def ids_of(counts: Counter[tuple[str, str]]) -> Counter[str]:
        ids: Counter[str] = Counter()
        for (message_id, run), count in counts.items():
            if run != run_id:
                ids[message_id] += count
        return ids

    def by_key(found: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
        assert to_remove is not None
        wanted = to_remove(ids_of(found))
        chosen: Counter[tuple[str, str]] = Counter()
        for (message_id, run), count in found.items():
            if run != run_id and wanted[message_id] > 0:
                chosen[(message_id, run)] = taken = min(count, wanted[message_id])
                wanted[message_id] -= taken
        return chosen

    found, acked = await _queued(connection, queue, floor, by_key if to_remove is not None else None)
    return ids_of(found), ids_of(acked)


def _unchecked_rows(engine: Engine, queue: str) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(dlq_replays.c.id, dlq_replays.c.run_id, dlq_replays.c.action, dlq_replays.c.message_id).where(
                    dlq_replays.c.queue == printable(queue)[:255],
                    dlq_replays.c.outcome == "FAILED",
                    dlq_replays.c.detail == UNCHECKED,
                )
            )
        )


async def resolve_unchecked(connection: AbstractConnection, engine: Engine, queue: str) -> int:
    """Settle the rows an earlier pass over ``queue`` left unchecked (killed between its acks and its check):
    a message no longer in the queue was removed by that pass; one still there was not. Returns how many.

    Run before a pass takes anything, when nothing of this tool holds the queue's messages: a pass killed a
    moment ago may still have its held messages on their way back, which the settle wait allows for."""
    rows = await asyncio.to_thread(_unchecked_rows, engine, queue)
    if not rows:
        return 0
    found, _ = await _queued(connection, queue, 0)
    removed: dict[int, str] = {}
    kept: dict[int, str | None] = {}
    for row in rows:
        # The row's message id as stored (escaped, cut): compare what the queue holds the same way.
        there = any(printable(message_id)[:100] == row.message_id and run != row.run_id for message_id, run in found)
        if not there:
            removed[row.id] = "REPLAYED" if row.action == "REPLAY" else "PURGED"
        elif row.action == "REPLAY":
            kept[row.id] = "republished (confirmed), but still in the dead-letter queue after its ack"
        else:
            kept[row.id] = None
    await asyncio.to_thread(_finish_audit, engine, removed, kept)
    log.info(
        "dead-letter rows of an interrupted pass settled",
        extra={"queue": queue, "removed": len(removed), "not_removed": len(kept)},
    )
    return len(rows)


async def _run_pass(
    amqp_url: AmqpUrls,
    engine: Engine,
    queue: str,
    selection: Selection,
    *,
    actor: str,
    action: str,
    dry_run: bool,
    batch_size: int,
    progress: Progress | None,
    on_depth: Callable[[int], None] | None,
) -> PassReport:
    if not dry_run:
        # The audit must be writable before anything is taken: fail now rather than after a first republish.
        await asyncio.to_thread(_check_database, engine)
    connection = await connect_once(amqp_url, CONNECTION_NAME)
    try:
        depth = await queue_depth(connection, queue)
        if depth is None:
            raise LookupError(f"queue {queue!r} does not exist")
        if not dry_run:
            await resolve_unchecked(connection, engine, queue)
            depth = await queue_depth(connection, queue) or 0
        if on_depth is not None:
            on_depth(depth)
        worker = _Pass(connection, engine, queue, selection, actor, action, dry_run, batch_size, progress)
        report = await worker.run(depth)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    log.info("dead-letter pass finished", extra=report.as_dict() | {"actor": actor})
    return report


async def replay(
    amqp_url: AmqpUrls,
    engine: Engine,
    queue: str,
    selection: Selection = Selection(),
    *,
    actor: str,
    dry_run: bool = False,
    batch_size: int = 100,
    progress: Progress | None = None,
    on_depth: Callable[[int], None] | None = None,
) -> PassReport:
    """Send the selected messages of ``queue`` back to where they were first published; see the module doc."""
    return await _run_pass(
        amqp_url,
        engine,
        queue,
        selection,
        actor=actor,
        action="REPLAY",
        dry_run=dry_run,
        batch_size=batch_size,
        progress=progress,
        on_depth=on_depth,
    )


async def purge(
    amqp_url: AmqpUrls,
    engine: Engine,
    queue: str,
    selection: Selection = Selection(),
    *,
    actor: str,
    dry_run: bool = False,
    batch_size: int = 500,
    progress: Progress | None = None,
    on_depth: Callable[[int], None] | None = None,
) -> PassReport:
    """Remove the selected messages of ``queue`` for good, each with an audit row (written before its ack)."""
    return await _run_pass(
        amqp_url,
        engine,
        queue,
        selection,
        actor=actor,
        action="PURGE",
        dry_run=dry_run,
        batch_size=batch_size,
        progress=progress,
        on_depth=on_depth,
    )
