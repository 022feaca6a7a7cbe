"""The hash chain of ``order_events``: each row's ``hash`` covers its fields and the hash before it.

``hash = sha256(prev_hash || canonical(row))``; ``prev_hash`` is the hash of the order's previous event (the
first event's is ``GENESIS``, 32 zero bytes), and the order's row keeps the last one (``orders.last_event_hash``,
the chain head). A row changed afterwards no longer matches its hash; a row removed leaves a gap in the
sequences and a ``prev_hash`` that names no row; a row inserted does not link to the row before it, or stands
after the head. ``check_chain`` names each, for ``./oms audit verify`` and the tests.

Who computes it: the writer (``OrderRepository.flush``), under the order's row lock, from the row it is about to
insert; the migration that introduced the chain (0007) computed it for the rows that were there. Not a
trigger: the writer has the previous hash in hand (the order row carries the head), where a trigger would
look it up and hash in the server, per row, on the hot path. Postgres still guards the result: the workers'
role may insert events but neither update nor delete them (migration 0008).

The canonical form must come out the same from the writer's values and from what Postgres gives back, so it
is built from the payload's JSON text either way (the writer's serialisation, or ``payload::text``) with the
differences JSONB makes smoothed out: keys sorted, whitespace dropped, every non-integer number in plain
positional notation (JSONB prints ``1E+2`` as ``100`` and ``-0.0`` as ``0.0``). The timestamp enters as
microseconds since the epoch (what ``timestamptz`` keeps). A payload field encrypted as an envelope
(``common.store.field_crypto``: the cancel reasons) enters as its ``chain_form``, the ciphertext without the
key id and wrapped key: the hash covers what is stored, never the plaintext (a hash over a short plaintext would
let whoever reads the table test guesses, and verifying would need the keys), and ``./oms data-keys reencrypt``
re-wraps the value's key under a new ring key without changing a hash. Changing the ciphertext changes the hash;
changing the wrapping makes the value fail to decrypt (AES-GCM), which a read reports (no row written before
envelopes existed holds one, so the tag stayed). The form is versioned (``CANONICAL_TAG``): a new form gets a
new tag, and rows keep verifying under the one they were written with only if the verifier keeps the old form
too.

What it does not do: someone who may write both ``order_events`` and ``orders`` (the schema owner, a superuser)
can rebuild a chain that verifies; only a copy of the heads kept outside the database would show that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from common import jsonutil
from common.store.field_crypto import ENVELOPE_PREFIX, chain_form

GENESIS = bytes(32)
HASH_BYTES = 32
CANONICAL_TAG = "oms.order_event.v1"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _plain_number(text: str) -> msgspec.Raw:
    """A JSON number as Postgres's ``numeric`` prints it: positional, scale kept, no negative zero."""
    number = Decimal(text)
    if number.is_zero():
        number = number.copy_abs()
    return msgspec.Raw(format(number, "f").encode())


# Integers stay ints (printed alike by both sides); every other number goes through _plain_number.
_PAYLOAD_DECODER = msgspec.json.Decoder(float_hook=_plain_number)
_CANONICAL_ENCODER = msgspec.json.Encoder(order="sorted")
# The payload fields that may hold an envelope (field_crypto.ENVELOPE_PREFIX): one lookup per event.
_ENVELOPED_FIELDS = ("reason",)


def to_bytea(digest: bytes) -> str:
    """A hash as the text form Postgres reads into ``bytea`` (``\\x`` and hex), for the JSON record sets."""
    return "\\x" + digest.hex()


def _micros(timestamp: datetime) -> int:
    if timestamp.tzinfo is None:  # the domain's times are aware; a naive one is taken as UTC
        timestamp = timestamp.replace(tzinfo=UTC)
    return (timestamp - _EPOCH) // _MICROSECOND


def canonical(
    *,
    id: str,
    order_id: str,
    sequence: int,
    type: str,
    payload_json: str | bytes,
    user_id: str | None,
    timestamp: datetime,
    correlation_id: str | None,
    message_id: str | None,
) -> bytes:
    """The bytes an event's hash covers (besides the previous hash)."""
    payload = _PAYLOAD_DECODER.decode(payload_json)
    if isinstance(payload, dict):
        for name in _ENVELOPED_FIELDS:
            value = payload.get(name)
            if isinstance(value, str) and value.startswith(ENVELOPE_PREFIX):
                payload[name] = chain_form(value)
    return _CANONICAL_ENCODER.encode(
        [
            CANONICAL_TAG,
            id,
            order_id,
            sequence,
            type,
            payload,
            user_id,
            _micros(timestamp),
            correlation_id,
            message_id,
        ]
    )


def link(prev_hash: bytes, canonical_bytes: bytes) -> bytes:
    """``sha256(prev_hash || canonical_bytes)``."""
    return hashlib.sha256(prev_hash + canonical_bytes).digest()


def row_hash(prev_hash: bytes, row: Mapping[str, Any]) -> bytes:
    """The hash of an event row as the writer holds it (``payload`` a mapping, not yet serialised)."""
    return link(
        prev_hash,
        canonical(
            id=row["id"],
            order_id=row["order_id"],
            sequence=row["sequence"],
            type=row["type"],
            payload_json=jsonutil.dumps_bytes(row["payload"]),
            user_id=row["user_id"],
            timestamp=row["timestamp"],
            correlation_id=row["correlation_id"],
            message_id=row["message_id"],
        ),
    )


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """An ``order_events`` row as read back: ``payload_json`` is the payload's JSON text (``payload::text``)."""

    id: str
    order_id: str
    sequence: int
    type: str
    payload_json: str | bytes
    user_id: str | None
    timestamp: datetime
    correlation_id: str | None
    message_id: str | None
    prev_hash: bytes | None
    hash: bytes | None

    def recomputed(self) -> bytes | None:
        """What the hash should be for the row's fields and its own ``prev_hash`` (None without one)."""
        if self.prev_hash is None:
            return None
        return link(
            self.prev_hash,
            canonical(
                id=self.id,
                order_id=self.order_id,
                sequence=self.sequence,
                type=self.type,
                payload_json=self.payload_json,
                user_id=self.user_id,
                timestamp=self.timestamp,
                correlation_id=self.correlation_id,
                message_id=self.message_id,
            ),
        )


@dataclass(frozen=True, slots=True)
class Purge:
    """Retention dropped the order's events up to ``last_sequence``; the last of them had ``last_event_hash``."""

    last_sequence: int
    last_event_hash: bytes


CHANGED, REMOVED, INSERTED = "changed", "removed", "inserted"


@dataclass(frozen=True, slots=True)
class Finding:
    """Something wrong with one order's chain: ``kind`` is changed, removed or inserted."""

    kind: str
    order_id: str
    detail: str
    event_id: str | None = None
    sequence: int | None = None

    def line(self) -> str:
        """One line for people: what, where, why."""
        where = f" event {self.event_id} (sequence {self.sequence})" if self.event_id else ""
        return f"{self.kind.upper():<8} order {self.order_id}{where}: {self.detail}"


def _short(digest: bytes | None) -> str:
    return "none" if digest is None else digest.hex()[:16]


def check_chain(
    order_id: str, head: bytes | None, events: Sequence[ChainEvent], purge: Purge | None = None
) -> list[Finding]:
    """What is wrong with one order's chain (``events`` in sequence order; ``head``: ``orders.last_event_hash``;
    ``purge``: what retention recorded dropping of it). Empty when the chain is whole."""
    findings: list[Finding] = []
    expected_sequence, expected_prev = (
        (1, GENESIS) if purge is None else (purge.last_sequence + 1, purge.last_event_hash)
    )
    for event in events:
        if event.hash is None or event.prev_hash is None or event.recomputed() != event.hash:
            findings.append(Finding(CHANGED, order_id, "its fields do not match its hash", event.id, event.sequence))
        if event.sequence > expected_sequence:
            missing = (
                f"sequence {expected_sequence}"
                if event.sequence == expected_sequence + 1
                else f"sequences {expected_sequence}..{event.sequence - 1}"
            )
            findings.append(Finding(REMOVED, order_id, f"{missing} missing before it", event.id, event.sequence))
        elif event.sequence < expected_sequence:
            findings.append(
                Finding(
                    INSERTED,
                    order_id,
                    f"sequence {event.sequence} where {expected_sequence} was due (before what retention dropped)",
                    event.id,
                    event.sequence,
                )
            )
        elif event.prev_hash != expected_prev:
            before = "the chain's start" if expected_sequence == 1 else f"sequence {expected_sequence - 1}"
            findings.append(
                Finding(
                    INSERTED,
                    order_id,
                    f"does not link to {before} (prev_hash {_short(event.prev_hash)}, expected "
                    f"{_short(expected_prev)}): inserted, or the row before it rewritten with a new hash",
                    event.id,
                    event.sequence,
                )
            )
        expected_sequence = event.sequence + 1
        expected_prev = event.hash if event.hash is not None else b""
    findings.extend(_check_head(order_id, head, events, purge, expected_prev))
    return findings


def _check_head(
    order_id: str, head: bytes | None, events: Sequence[ChainEvent], purge: Purge | None, last: bytes
) -> list[Finding]:
    """The chain must end at the order's head: anything after it was inserted, a head past it means removals."""
    if not events:
        if head is None:
            return []  # an order without events (written around the application): nothing to chain
        if purge is not None and purge.last_event_hash == head:
            return []  # retention dropped the whole chain and recorded it
        return [Finding(REMOVED, order_id, f"no events left, but the order's head is {_short(head)}")]
    if head is None:
        return [
            Finding(
                INSERTED,
                order_id,
                "events without a chain head on the order: written around the application, or the head cleared",
            )
        ]
    if last == head:
        return []
    after = [e for e in events if e.hash == head]
    if after:
        newer = [e for e in events if e.sequence > after[-1].sequence]
        return [
            Finding(INSERTED, order_id, f"after the order's head (sequence {after[-1].sequence})", e.id, e.sequence)
            for e in newer
        ]
    tail = events[-1]
    return [
        Finding(
            REMOVED,
            order_id,
            f"the chain ends at sequence {tail.sequence} but the order's head ({_short(head)}) is not in it: "
            "events after it removed, or the head rewritten",
            tail.id,
            tail.sequence,
        )
    ]


def chain_rows(rows: Iterable[Mapping[str, Any]]) -> list[ChainEvent]:
    """``ChainEvent``s from mappings with the ``order_events`` columns (``payload_json`` the payload's text)."""
    return [
        ChainEvent(
            id=row["id"],
            order_id=row["order_id"],
            sequence=row["sequence"],
            type=row["type"],
            payload_json=row["payload_json"],
            user_id=row["user_id"],
            timestamp=row["timestamp"],
            correlation_id=row["correlation_id"],
            message_id=row["message_id"],
            prev_hash=None if row["prev_hash"] is None else bytes(row["prev_hash"]),
            hash=None if row["hash"] is None else bytes(row["hash"]),
        )
        for row in rows
    ]
