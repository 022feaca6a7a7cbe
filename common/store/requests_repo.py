"""Venue requests (``order_requests``): one row per new, cancel or replace request the OMS sends the venue.

Two ways in: ``RequestRepository`` (``uow.requests``), which buffers new rows and status moves and writes each
kind in one statement per batch, for the stages, the order commands and the jobs; and the functions below, which
run at once on a connection, for tools and tests that set rows up. The statuses are
``common.orders.records``'s.

``reason`` is encrypted at rest (``common.store.field_crypto``, v1, bound to the request id): a cancel's reason
is the client's text. Whatever writes it (the client's cancel, a skip, a venue's refusal) goes through the same
field, so the column holds one form; values are sealed as written and opened as read, on engines that carry
the data keys (none: plaintext, as before). Cost: nothing for a request without a reason (every new order's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, Connection, RowMapping, String, any_, bindparam, insert, select, text

from common.orders.records import FINAL_REQUEST_STATUSES, VenueRequest
from common.store import hot_sql, tables
from common.store.bulk import bulk_insert, rows_parameter
from common.store.field_crypto import REASON, open_for, seal_for

_INSERT_ONE = insert(tables.order_requests)
_LOAD_ONE = (
    select(tables.order_requests).where(tables.order_requests.c.request_id == bindparam("request_id")).with_for_update()
)
_SET_STATUS = text(
    "UPDATE order_requests SET status = :status, reason = COALESCE(CAST(:reason AS text), reason), "
    "updated_at = :now WHERE request_id = :request_id"
)
_ANSWER = text(
    "UPDATE order_requests SET status = :status, reason = COALESCE(CAST(:reason AS text), reason), "
    "updated_at = :now WHERE request_id = :request_id AND order_id = :order_id "
    "AND status NOT IN ('DONE', 'REJECTED') RETURNING request_id"  # FINAL_REQUEST_STATUSES
)


def record_request(
    connection: Connection,
    *,
    request_id: str,
    order_id: str,
    kind: str,
    terms: Mapping[str, Any],
    status: str,
    reason: str | None,
    created_by: str | None,
    now: datetime,
) -> None:
    """Insert an ``order_requests`` row."""
    row = _request_row(request_id, order_id, kind, terms, status, reason, created_by, now)
    connection.execute(_INSERT_ONE, _sealed(connection, row))


def _sealed(connection: Connection, row: dict[str, Any]) -> dict[str, Any]:
    """The row as stored: its reason encrypted (when the connection's engine carries the data keys)."""
    if not row["reason"]:
        return row
    return {**row, "reason": seal_for(connection, row["reason"], row["request_id"], REASON)}


def _request_row(
    request_id: str,
    order_id: str,
    kind: str,
    terms: Mapping[str, Any],
    status: str,
    reason: str | None,
    created_by: str | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "order_id": order_id,
        "kind": kind,
        "terms": dict(terms),
        "status": status,
        "reason": reason,
        "created_by": created_by,
        "created_at": now,
        "updated_at": now,
    }


def venue_request(row: Mapping[str, Any] | RowMapping, connection: Connection) -> VenueRequest:
    """The request of an ``order_requests`` row read on ``connection`` (its reason decrypted)."""
    reason = row["reason"]
    return VenueRequest(
        request_id=row["request_id"],
        order_id=row["order_id"],
        kind=row["kind"],
        terms=row["terms"] or {},
        status=row["status"],
        reason=open_for(connection, reason, row["request_id"], REASON) if reason else reason,
        created_by=row["created_by"],
    )


def load_request(connection: Connection, request_id: str) -> VenueRequest | None:
    """The request row, locked for this transaction (the router updates it)."""
    row = connection.execute(_LOAD_ONE, {"request_id": request_id}).mappings().first()
    return None if row is None else venue_request(row, connection)


def set_request_status(
    connection: Connection, request_id: str, status: str, now: datetime, reason: str | None = None
) -> None:
    """Move a request row to ``status`` (keeping its reason unless a new one is given)."""
    stored = seal_for(connection, reason, request_id, REASON)
    connection.execute(_SET_STATUS, {"request_id": request_id, "status": status, "reason": stored, "now": now})


def answer_request(
    connection: Connection, order_id: str, request_id: str, status: str, reason: str | None, now: datetime
) -> bool:
    """Move this order's ``order_requests`` row to ``status``; False if unknown or already final."""
    stored = seal_for(connection, reason, request_id, REASON)
    result = connection.execute(
        _ANSWER, {"request_id": request_id, "order_id": order_id, "status": status, "reason": stored, "now": now}
    )
    return result.first() is not None


# --------------------------------------------------------------------------- the buffered repository

# Typed (not text): the JSON terms come back through the engine's Decimal-exact deserialiser.
_LOCK_SQL = hot_sql.hot(
    select(tables.order_requests)
    .where(tables.order_requests.c.request_id == any_(bindparam("ids", type_=ARRAY(String))))
    .order_by(tables.order_requests.c.request_id)
    .with_for_update()
)
_LATEST_SQL = (
    select(tables.order_requests)
    .where(tables.order_requests.c.order_id == bindparam("order_id"), tables.order_requests.c.kind == bindparam("kind"))
    .order_by(tables.order_requests.c.created_at.desc())
    .limit(1)
)
_STATUS_SQL = hot_sql.hot(
    text("SELECT request_id, order_id, status FROM order_requests WHERE request_id = ANY(CAST(:ids AS varchar[]))")
)
_REQUEST_COLUMNS = (
    ("request_id", "varchar"),
    ("order_id", "varchar"),
    ("kind", "varchar"),
    ("terms", "jsonb"),
    ("status", "varchar"),
    ("reason", "text"),
    ("created_by", "varchar"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
_INSERT_SQL = bulk_insert("order_requests", _REQUEST_COLUMNS)
_MOVE_COLUMNS = (
    ("request_id", "varchar"),
    ("status", "varchar"),
    ("reason", "text"),
    ("updated_at", "timestamptz"),
    ("guarded", "boolean"),
)
# A guarded move (a venue's answer) never moves a request already final, even one made final since it was read.
_MOVE_SQL = hot_sql.hot(
    text(
        "UPDATE order_requests AS q "
        "SET status = m.status, reason = COALESCE(m.reason, q.reason), updated_at = m.updated_at "
        "FROM json_to_recordset(CAST(:rows AS json)) "
        "AS m(request_id varchar, status varchar, reason text, updated_at timestamptz, guarded boolean) "
        "WHERE q.request_id = m.request_id AND q.request_id = ANY(CAST(:keys AS varchar[])) "  # see bulk.bulk_update
        "AND (NOT m.guarded OR q.status NOT IN ('DONE', 'REJECTED'))"  # FINAL_REQUEST_STATUSES
    )
)


@dataclass(slots=True)
class _Move:
    """A buffered status move of a stored row; several moves of one row in a batch fold into one."""

    status: str
    reason: str | None
    updated_at: datetime
    guarded: bool  # applies only if the row is not final when written (a venue's answer to an unlocked row)


class RequestRepository:
    """``order_requests`` of one transaction (``uow.requests``).

    New rows and status moves are buffered and written at ``flush`` in one statement each, whatever the batch
    size; reads see what is buffered. ``prefetch`` looks up many requests' status in one round trip (no lock),
    which is all ``answer`` needs; ``lock``/``get`` read whole rows locked (the router, before it sends one).

    Keep to this repository within a transaction that uses it: the module's functions (``load_request``...) run
    at once on the connection and this repository would not see their writes.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.reset()

    def reset(self) -> None:
        """Forget what this transaction read and buffered (after a commit or a rollback)."""
        # request id -> (order id, status) as this transaction sees it; None: no such request.
        self._status: dict[str, tuple[str, str] | None] = {}
        # request id -> the row read locked (or written here), as this transaction sees it; None: no such request.
        self._locked: dict[str, VenueRequest | None] = {}
        self._inserts: dict[str, dict[str, Any]] = {}
        self._moves: dict[str, _Move] = {}

    # --- reads

    def _seen(self, request_id: str, order_id: str, stored_status: str) -> str:
        """The status a stored row has for this transaction: what it read, with its buffered move on top."""
        move = self._moves.get(request_id)
        status = stored_status
        if move is not None and not (move.guarded and stored_status in FINAL_REQUEST_STATUSES):
            status = move.status
        self._status[request_id] = (order_id, status)
        return status

    def prefetch(self, request_ids: Iterable[str]) -> None:
        """Find, in one round trip, the order and status of these requests (not locked)."""
        ids = [i for i in set(request_ids) if i not in self._status]
        if not ids:
            return
        for request_id, order_id, status in hot_sql.rows(self._connection, _STATUS_SQL, {"ids": ids}):
            self._seen(request_id, order_id, status)
        for request_id in ids:
            self._status.setdefault(request_id, None)

    def lock(self, request_ids: Iterable[str]) -> None:
        """Read and lock these requests' rows in one round trip, in id order (so lockers queue, not deadlock)."""
        ids = sorted(i for i in set(request_ids) if i not in self._locked)
        if not ids:
            return
        for row in hot_sql.mappings(self._connection, _LOCK_SQL, {"ids": ids}):
            request_id = row["request_id"]
            move = self._moves.get(request_id)
            status = self._seen(request_id, row["order_id"], row["status"])
            request = venue_request(row, self._connection)
            if move is not None:
                if move.guarded and row["status"] in FINAL_REQUEST_STATUSES:
                    del self._moves[request_id]  # an answer to a row already final: it would change nothing
                else:
                    if move.reason is not None:
                        request = replace(request, reason=move.reason)
                    move.guarded = False  # the row is locked: the move is certain now
            self._locked[request_id] = replace(request, status=status)
        for request_id in ids:
            self._locked.setdefault(request_id, None)
            self._status.setdefault(request_id, None)

    def get(self, request_id: str) -> VenueRequest | None:
        """The request, locked for this transaction, as this transaction sees it (None if there is none)."""
        self.lock([request_id])
        return self._locked.get(request_id)

    def latest(self, order_id: str, kind: str) -> VenueRequest | None:
        """The order's request of this kind written last (not locked), None if it has none."""
        self.flush()  # it may be this transaction's
        row = self._connection.execute(_LATEST_SQL, {"order_id": order_id, "kind": kind}).mappings().first()
        return None if row is None else venue_request(row, self._connection)

    # --- writes (buffered)

    def record(
        self,
        *,
        request_id: str,
        order_id: str,
        kind: str,
        terms: Mapping[str, Any],
        status: str,
        reason: str | None,
        created_by: str | None,
        now: datetime,
    ) -> None:
        """Add an ``order_requests`` row (written at flush)."""
        self._inserts[request_id] = _request_row(request_id, order_id, kind, terms, status, reason, created_by, now)
        self._locked[request_id] = VenueRequest(request_id, order_id, kind, dict(terms), status, reason, created_by)
        self._status[request_id] = (order_id, status)

    def set_status(self, request_id: str, status: str, now: datetime, reason: str | None = None) -> None:
        """Move a request to ``status`` (keeping its reason unless a new one is given), whatever its status."""
        self._move(request_id, status, reason, now, guarded=False)

    def answer(self, order_id: str, request_id: str, status: str, reason: str | None, now: datetime) -> bool:
        """Move this order's request to ``status`` (a venue's answer); False if unknown or already final.

        Costs no round trip for a request ``prefetch``ed (or read or written) in this transaction.
        """
        if request_id not in self._status:
            self.prefetch([request_id])
        known = self._status.get(request_id)
        if known is None or known[0] != order_id or known[1] in FINAL_REQUEST_STATUSES:
            return False
        self._move(request_id, status, reason, now, guarded=request_id not in self._locked)
        return True

    def _move(self, request_id: str, status: str, reason: str | None, now: datetime, *, guarded: bool) -> None:
        row = self._inserts.get(request_id)
        if row is not None:  # not written yet: the row is written as it ends up
            row["status"], row["updated_at"] = status, now
            if reason is not None:
                row["reason"] = reason
        else:
            move = self._moves.get(request_id)
            if move is None:
                self._moves[request_id] = _Move(status, reason, now, guarded)
            else:
                move.status, move.updated_at = status, now
                move.reason = reason if reason is not None else move.reason
                move.guarded = move.guarded and guarded  # after an unconditional move, the row's status is known
        known = self._status.get(request_id)
        if known is not None:
            self._status[request_id] = (known[0], status)
        locked = self._locked.get(request_id)
        if locked is not None:
            self._locked[request_id] = replace(
                locked, status=status, reason=locked.reason if reason is None else reason
            )

    def flush(self) -> None:
        """Write the buffered rows and status moves: one statement each, whatever the batch size."""
        if self._inserts:
            rows = [_sealed(self._connection, row) for row in self._inserts.values()]
            hot_sql.execute(self._connection, _INSERT_SQL, rows_parameter(rows, _REQUEST_COLUMNS))
            self._inserts.clear()
        if self._moves:
            moves = [
                {
                    "request_id": rid,
                    "status": m.status,
                    # Most moves (a venue's answers) carry no reason: nothing to seal, no work.
                    "reason": seal_for(self._connection, m.reason, rid, REASON) if m.reason else m.reason,
                    "updated_at": m.updated_at,
                    "guarded": m.guarded,
                }
                for rid, m in self._moves.items()
            ]
            hot_sql.execute(self._connection, _MOVE_SQL, rows_parameter(moves, _MOVE_COLUMNS))
            self._moves.clear()
