"""Operations on the risk set-up while the system runs: limits, restricted symbols, the kill switch.

Each change runs in the caller's transaction and writes an audit row to ``risk_limit_changes`` (who, when,
what, old and new value, why). The gate reads these tables in every batch, so a change applies to the
next batch without a restart. Shared by ``oms risk`` and the operations endpoints of the REST API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert

from common.risk.controls import Halt, Restriction
from common.risk.limits import LIMIT_NAMES, Limits, LimitValue, parse_changes, resolve
from common.store import tables
from common.store.tables import (
    restricted_symbols,
    risk_limit_changes,
    risk_limits,
    trading_halts,
)

KIND_LIMIT = "LIMIT"
KIND_RESTRICTION = "RESTRICTION"
KIND_HALT = "HALT"


class UnknownAccount(LookupError):
    """The account named does not exist."""


class UnknownSymbol(LookupError):
    """The symbol named is not an instrument."""


@dataclass(frozen=True)
class LimitsView:
    """A scope's own limit values, the limits in force there and where each comes from."""

    account_id: str | None
    own: dict[str, LimitValue | None]
    effective: Limits
    sources: dict[str, str]
    updated_at: datetime | None
    updated_by: str | None


@dataclass(frozen=True)
class LimitChange:
    """One limit changed: its old and new value (None: inherited / off)."""

    name: str
    old: LimitValue | None
    new: LimitValue | None


def _now() -> datetime:
    return datetime.now(UTC)


def _audit(
    connection: Connection,
    *,
    account_id: str | None,
    kind: str,
    item: str,
    old: object,
    new: object,
    by: str | None,
    reason: str | None,
    now: datetime,
) -> None:
    connection.execute(
        insert(risk_limit_changes).values(
            changed_at=now,
            changed_by=by,
            account_id=account_id,
            kind=kind,
            item=item,
            old_value=old,
            new_value=new,
            reason=reason,
        )
    )


def _audit_switch(
    connection: Connection,
    account_id: str | None,
    kind: str,
    item: str,
    *,
    on: bool,
    by: str | None,
    reason: str | None,
    now: datetime,
) -> None:
    """Audit a restriction or halt put in place (``on``) or lifted."""
    _audit(connection, account_id=account_id, kind=kind, item=item, old=not on, new=on, by=by, reason=reason, now=now)


def _require_account(connection: Connection, account_id: str | None) -> None:
    if account_id is None:
        return
    a = tables.accounts.c
    if connection.execute(select(a.id).where(a.id == account_id)).first() is None:
        raise UnknownAccount(f"account {account_id} does not exist")


def _require_symbol(connection: Connection, symbol: str) -> None:
    i = tables.instruments.c
    if connection.execute(select(i.symbol).where(i.symbol == symbol)).first() is None:
        raise UnknownSymbol(f"instrument {symbol} is not known")


def _scope(account_column: Any, account_id: str | None) -> Any:
    """Rows of one account, or the global ones (``account_id`` None)."""
    return account_column.is_(None) if account_id is None else account_column == account_id


def _row(connection: Connection, account_id: str | None, for_update: bool = False) -> Mapping[str, Any] | None:
    stmt = select(risk_limits).where(_scope(risk_limits.c.account_id, account_id))
    if for_update:
        stmt = stmt.with_for_update()
    row = connection.execute(stmt).mappings().first()
    return dict(row) if row is not None else None


# --------------------------------------------------------------------------- limits


def show_limits(connection: Connection, account_id: str | None) -> LimitsView:
    """The limits of an account (or the global ones when ``account_id`` is None)."""
    _require_account(connection, account_id)
    global_row = _row(connection, None)
    own_row = global_row if account_id is None else _row(connection, account_id)
    effective, sources = resolve(global_row, None) if account_id is None else resolve(global_row, own_row)
    own = {name: (own_row or {}).get(name) for name in LIMIT_NAMES}
    return LimitsView(
        account_id=account_id,
        own=own,
        effective=effective,
        sources=sources,
        updated_at=(own_row or {}).get("updated_at"),
        updated_by=(own_row or {}).get("updated_by"),
    )


def set_limits(
    connection: Connection,
    account_id: str | None,
    changes: Mapping[str, object],
    *,
    by: str | None,
    reason: str | None = None,
) -> list[LimitChange]:
    """Change some limits of a scope (None / ``inherit`` clears one); returns what actually changed.

    Raises ``InvalidLimit`` (bad name or value, nothing changed) and ``UnknownAccount``.
    """
    parsed = parse_changes(changes)
    _require_account(connection, account_id)
    now = _now()
    if account_id is not None:
        # An account's first change creates its row (every limit inheriting); a concurrent creator is fine.
        connection.execute(
            insert(risk_limits)
            .values(account_id=account_id, updated_at=now, updated_by=by)
            .on_conflict_do_nothing(constraint="uq_risk_limits_account")
        )
    current = _row(connection, account_id, for_update=True) or {}
    done: list[LimitChange] = []
    for name in sorted(parsed, key=LIMIT_NAMES.index):  # one order for the audit trail, whatever the input's
        new = parsed[name]
        old = current.get(name)
        if _same(old, new):
            continue
        done.append(LimitChange(name, old, new))
        _audit(
            connection,
            account_id=account_id,
            kind=KIND_LIMIT,
            item=name,
            old=old,
            new=new,
            by=by,
            reason=reason,
            now=now,
        )
    if done:
        connection.execute(
            update(risk_limits)
            .where(_scope(risk_limits.c.account_id, account_id))
            .values(**{c.name: c.new for c in done}, updated_at=now, updated_by=by)
        )
    return done


def _same(old: object, new: object) -> bool:
    if old is None or new is None:
        return old is new
    if isinstance(old, bool) or isinstance(new, bool):
        return old is new
    return Decimal(str(old)) == Decimal(str(new))


# --------------------------------------------------------------------------- restricted symbols


def restrictions(connection: Connection, account_id: str | None = None) -> list[Restriction]:
    """Restricted symbols: every one, or those binding one account (its own and the global ones)."""
    r = restricted_symbols.c
    stmt = select(r.account_id, r.symbol, r.reason).order_by(r.account_id.nulls_first(), r.symbol)
    if account_id is not None:
        stmt = stmt.where((r.account_id.is_(None)) | (r.account_id == account_id))
    return [Restriction(**row) for row in connection.execute(stmt).mappings()]


def restrict(
    connection: Connection, account_id: str | None, symbol: str, *, by: str | None, reason: str | None
) -> bool:
    """Put a symbol on the restricted list of an account (or everyone's); False if it was already there."""
    _require_account(connection, account_id)
    _require_symbol(connection, symbol)
    now = _now()
    inserted = connection.execute(
        insert(restricted_symbols)
        .values(account_id=account_id, symbol=symbol, reason=reason, created_by=by, created_at=now)
        .on_conflict_do_nothing(constraint="uq_restricted_symbols")
        .returning(restricted_symbols.c.id)
    ).first()
    if inserted is None:
        return False
    _audit_switch(connection, account_id, KIND_RESTRICTION, symbol, on=True, by=by, reason=reason, now=now)
    return True


def unrestrict(
    connection: Connection, account_id: str | None, symbol: str, *, by: str | None, reason: str | None
) -> bool:
    """Take a symbol off a restricted list; False if it was not on it."""
    r = restricted_symbols.c
    scope = _scope(r.account_id, account_id)
    removed = connection.execute(delete(restricted_symbols).where(scope, r.symbol == symbol).returning(r.id)).first()
    if removed is None:
        return False
    _audit_switch(connection, account_id, KIND_RESTRICTION, symbol, on=False, by=by, reason=reason, now=_now())
    return True


# --------------------------------------------------------------------------- kill switch


def halts(connection: Connection) -> list[Halt]:
    """Every halt in force (the global one first)."""
    h = trading_halts.c
    rows = connection.execute(
        select(h.account_id, h.reason, h.halted_by, h.since).order_by(h.account_id.nulls_first())
    ).mappings()
    return [Halt(**row) for row in rows]


def halt(connection: Connection, account_id: str | None, *, by: str | None, reason: str) -> tuple[Halt, bool]:
    """Halt new orders of an account (or of every account); returns the halt and whether it is new."""
    _require_account(connection, account_id)
    now = _now()
    h = trading_halts.c
    inserted = (
        connection.execute(
            insert(trading_halts)
            .values(account_id=account_id, reason=reason, halted_by=by, since=now)
            .on_conflict_do_nothing(constraint="uq_trading_halts_account")
            .returning(h.account_id, h.reason, h.halted_by, h.since)
        )
        .mappings()
        .first()
    )
    if inserted is not None:
        _audit_switch(connection, account_id, KIND_HALT, "halt", on=True, by=by, reason=reason, now=now)
        return Halt(**inserted), True
    scope = _scope(h.account_id, account_id)
    row = connection.execute(select(h.account_id, h.reason, h.halted_by, h.since).where(scope)).mappings().one()
    return Halt(**row), False


def resume(connection: Connection, account_id: str | None, *, by: str | None, reason: str | None) -> bool:
    """Lift the halt of an account (or the global one); False if there was none."""
    h = trading_halts.c
    scope = _scope(h.account_id, account_id)
    removed = connection.execute(delete(trading_halts).where(scope).returning(h.id)).first()
    if removed is None:
        return False
    _audit_switch(connection, account_id, KIND_HALT, "halt", on=False, by=by, reason=reason, now=_now())
    return True


# --------------------------------------------------------------------------- audit


def recent_changes(connection: Connection, account_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The latest audit rows, newest first (of one account when given; the global scope is ``account_id`` None)."""
    c = risk_limit_changes.c
    stmt = select(risk_limit_changes).order_by(c.id.desc()).limit(limit)
    if account_id is not None:
        stmt = stmt.where(c.account_id == account_id)
    return [dict(row) for row in connection.execute(stmt).mappings()]
