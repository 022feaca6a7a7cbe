"""What the REST and gRPC front ends do with orders: authorise, validate, run the shared order commands, read.

Writes go through ``common.orders.commands`` in one unit of work each (the outbox rows they write are
published by the outbox relay); reads come from the read model (``services.api.queries``). Every answer is
the order as the read model shows it after the change. Errors are ``services.api.errors`` exceptions.

Where each read goes (docs/design.md, Reading from a replica): the queries (``get``, ``list``, the events'
``visible_order``) on the read engine, a replica's pool when there is one; an order the replica does not have
(yet) is asked of the primary before it is called missing, so a GET right after its POST finds it. Everything
that must see its own writes stays on the primary: the answer to a create, cancel or modify (read in the
transaction that wrote it), idempotent replays, and the check that the order exists and is the caller's
before a cancel or modify.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from common.domain import InvalidCommand, InvalidTransition, Order
from common.domain.validation import Code, validate_order
from common.logging import log_context
from common.orders.commands import cancel_order, modify_order, submit_order
from common.orders.duplicates import check_duplicate
from common.orders.errors import ConflictingDuplicate, InvalidOrderTerms, OrderNotFound, UnknownAccount
from common.orders.order_request import OrderRequest
from common.store.uow import UnitOfWork
from services.api import queries
from services.api.auth import SCOPE_READ, SCOPE_WRITE, Principal
from services.api.errors import Conflict, FieldError, Forbidden, IdempotencyConflict, InvalidRequest, NotFound
from services.api.rate_limit import FrontEndLimits

log = logging.getLogger(__name__)
T = TypeVar("T")

# Rules whose breach is a fact about the market or the account, not a mistake in the request: the order is
# booked REJECTED with the reason (201), as intake does for a trade decision. Every other rule is the
# caller's to fix: 400, and nothing is booked.
BOOKED_AS_REJECTED = frozenset({Code.ACCOUNT_INACTIVE, Code.INSTRUMENT_NOT_TRADABLE})
_CLIENT_ORDER_ID_CONSTRAINT = "uq_orders_client_order_id"
# A command on an order runs under the order's row lock, so it cannot collide with another writer of that
# order; these are what is left (a writer that broke the rule, a deadlock with a batch) and a fresh
# transaction resolves them. Anything else is a bug and must surface.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_RETRYABLE_CONSTRAINTS = frozenset({"uq_order_events_sequence"})
COMMAND_ATTEMPTS = 4


def _field_errors(violations: Any) -> list[FieldError]:
    return [FieldError(v.field, v.message) for v in violations]


def order_request_of(body: Mapping[str, Any], client_order_id: str | None) -> OrderRequest:
    """The order command's request from a loaded ``CreateOrderRequest`` (snake_case keys)."""
    return OrderRequest.from_body(body, client_order_id)


def valid_order_id(order_id: str) -> bool:
    """Order ids are UUIDs; anything else cannot name an order (and never reaches the database)."""
    try:
        uuid.UUID(order_id)
    except (ValueError, AttributeError):
        return False
    return len(order_id) == 36


def _is_client_order_conflict(exc: IntegrityError) -> bool:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None) == _CLIENT_ORDER_ID_CONSTRAINT


def _is_retryable(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
        return True
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None) in _RETRYABLE_CONSTRAINTS


def _retrying(what: str, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` (one transaction) again when it lost a race the database could only end by failing it."""
    for number in range(1, COMMAND_ATTEMPTS + 1):
        try:
            return attempt()
        except DBAPIError as exc:
            if number == COMMAND_ATTEMPTS or not _is_retryable(exc):
                raise
            log.info("order command lost a race; retrying", extra={"command": what, "error": repr(exc.orig)})
    raise AssertionError("unreachable")  # pragma: no cover


def _key_reused(exc: ConflictingDuplicate) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"Idempotency-Key (clientOrderId) {exc.key} was already used for order {exc.order.id} with other "
        f"terms: {', '.join(exc.fields)} differ",
        [
            FieldError(d.field, f"differs from the order booked with this key ({d.booked} there, {d.received} here)")
            for d in exc.differences
        ],
    )


class OrderService:
    """Order operations on behalf of an authenticated caller."""

    def __init__(self, engine: Engine, limits: FrontEndLimits | None = None, read_engine: Engine | None = None) -> None:
        self._engine = engine
        # The order queries' engine: ``engine`` itself unless the read side has its own (services.api.database).
        self.read_engine = read_engine or engine
        # Order writes count against the order's account (RateLimited when it is over); reads are counted by
        # the transports, against the token's subject.
        self._limits = limits or FrontEndLimits.unlimited()

    # ---- authorisation --------------------------------------------------------------------------------

    @staticmethod
    def require_scope(principal: Principal, scope: str) -> None:
        """Raise Forbidden unless the token carries ``scope``."""
        if not principal.has_scope(scope):
            raise Forbidden(f"this token lacks the scope {scope}")

    @staticmethod
    def require_account(principal: Principal, account_id: str) -> None:
        """Raise Forbidden unless the caller may use ``account_id``."""
        if not principal.may_use(account_id):
            raise Forbidden(f"this token does not grant account {account_id}")

    # ---- reads ----------------------------------------------------------------------------------------

    def get(self, principal: Principal, order_id: str) -> dict[str, Any]:
        """The order with its execution reports; NotFound for an unknown id or another account's order."""
        self.require_scope(principal, SCOPE_READ)
        return self._visible(principal, order_id, self.read_engine)

    def _visible(self, principal: Principal, order_id: str, engine: Engine) -> dict[str, Any]:
        if not valid_order_id(order_id):
            raise NotFound(f"order {order_id} not found")
        order = self._query(engine, order_id)
        if order is None and engine is not self._engine:
            # Not on the replica (yet): created on the primary since the replica last replayed.
            order = self._query(self._engine, order_id)
        # Another account's order is reported as missing: its existence is not the caller's business.
        if order is None or not principal.may_use(order["account_id"]):
            raise NotFound(f"order {order_id} not found")
        return order

    @staticmethod
    def _query(engine: Engine, order_id: str) -> dict[str, Any] | None:
        with engine.connect() as connection:
            # One statement (queries.get_order): its own snapshot, so no BEGIN and ROLLBACK round trips around it.
            connection.execution_options(isolation_level="AUTOCOMMIT")
            return queries.get_order(connection, order_id)

    def visible_order(self, principal: Principal, order_id: str, *, primary: bool = False) -> dict[str, Any]:
        """The order if the caller may see it (no scope check: the caller has checked its own): on the read
        engine, or with ``primary`` on the primary (a write is to be built on it)."""
        return self._visible(principal, order_id, self._engine if primary else self.read_engine)

    def list(self, principal: Principal, where: queries.OrderFilter, page: int, size: int) -> queries.OrderPage:
        """A page of the caller's orders matching ``where``."""
        self.require_scope(principal, SCOPE_READ)
        if where.account_id is not None:
            self.require_account(principal, where.account_id)
        where = replace(where, accounts=principal.account_filter())
        with self.read_engine.connect() as connection:
            return queries.list_orders(connection, where, page, size)

    # ---- writes ---------------------------------------------------------------------------------------

    def create(self, principal: Principal, request: OrderRequest) -> tuple[dict[str, Any], bool]:
        """Book an order; returns (order, created). The same client order id returns the same order."""
        self.require_scope(principal, SCOPE_WRITE)
        self.require_account(principal, request.account_id)
        self._limits.write(request.account_id)
        try:
            return self._create_once(principal, request)
        except IntegrityError as exc:
            if request.client_order_id is None or not _is_client_order_conflict(exc):
                raise
        # A concurrent submission with the same key committed first: answer with its order, if it is this one.
        with UnitOfWork(self._engine) as uow:
            existing = uow.orders.find_by_client_order_id(request.account_id, request.client_order_id)
            if existing is None:  # pragma: no cover - the constraint said it exists
                raise RuntimeError("client order id conflict without an order")
            self._check_replay(uow, existing, request)
            return self._read(uow, existing.id), False

    @staticmethod
    def _check_replay(uow: UnitOfWork, existing: Order, request: OrderRequest) -> None:
        try:
            check_duplicate(uow, existing, request)
        except ConflictingDuplicate as exc:
            log.warning(
                "idempotency key reused with other terms",
                extra={"order_id": existing.id, "client_order_id": exc.key, "fields": exc.fields},
            )
            raise _key_reused(exc) from exc

    def _create_once(self, principal: Principal, request: OrderRequest) -> tuple[dict[str, Any], bool]:
        with UnitOfWork(self._engine) as uow:
            if request.client_order_id is not None:
                existing = uow.orders.find_by_client_order_id(request.account_id, request.client_order_id)
                if existing is not None:
                    self._check_replay(uow, existing, request)
                    log.info("idempotent replay", extra={"order_id": existing.id})
                    return self._read(uow, existing.id), False
            uow.reference.prefetch([request.account_id], [request.symbol])  # one statement for both
            account = uow.reference.account(request.account_id)
            instrument = uow.reference.instrument(request.symbol)
            violations = [v for v in validate_order(request, instrument, account) if v.code not in BOOKED_AS_REJECTED]
            if violations:
                raise InvalidRequest("Invalid order request", _field_errors(violations))
            try:
                order, created = submit_order(
                    uow, request, user_id=principal.subject, correlation_id=None, message_id=None
                )
            except ConflictingDuplicate as exc:  # pragma: no cover - checked above in this transaction
                raise _key_reused(exc) from exc
            except UnknownAccount as exc:
                raise InvalidRequest(
                    "Invalid order request", [FieldError("accountId", f"account {exc.account_id} does not exist")]
                ) from exc
            except InvalidOrderTerms as exc:
                raise InvalidRequest("Invalid order request", _field_errors(exc.violations)) from exc
            answer = self._read(uow, order.id)
            uow.commit()
            with log_context(order_id=order.id):
                log.info("order submitted", extra={"status": order.status.value, "user_id": principal.subject})
            return answer, created

    def cancel(self, principal: Principal, order_id: str, reason: str | None) -> dict[str, Any]:
        """Cancel the order (at once if unrouted, else by a request to the venue)."""
        self.require_scope(principal, SCOPE_WRITE)
        # On the primary: the caller may cancel an order it has just created, which a replica may not have yet.
        self._limits.write(self._visible(principal, order_id, self._engine)["account_id"])
        return _retrying("cancel", lambda: self._cancel_once(principal, order_id, reason))

    def _cancel_once(self, principal: Principal, order_id: str, reason: str | None) -> dict[str, Any]:
        with UnitOfWork(self._engine) as uow, log_context(order_id=order_id):
            try:
                cancel_order(uow, order_id, reason=reason or "canceled by user", user_id=principal.subject)
            except OrderNotFound as exc:
                raise NotFound(f"order {order_id} not found") from exc
            except InvalidTransition as exc:
                raise Conflict(f"the order cannot be canceled: {exc}") from exc
            answer = self._read(uow, order_id)
            uow.commit()
            return answer

    def modify(
        self,
        principal: Principal,
        order_id: str,
        *,
        quantity: Decimal | None,
        price: Decimal | None,
        stop_price: Decimal | None,
        notes: str | None,
    ) -> dict[str, Any]:
        """Change the order's terms (values left None keep the current ones)."""
        self.require_scope(principal, SCOPE_WRITE)
        self._limits.write(self._visible(principal, order_id, self._engine)["account_id"])  # primary, as cancel
        return _retrying(
            "modify",
            lambda: self._modify_once(
                principal, order_id, quantity=quantity, price=price, stop_price=stop_price, notes=notes
            ),
        )

    def _modify_once(
        self,
        principal: Principal,
        order_id: str,
        *,
        quantity: Decimal | None,
        price: Decimal | None,
        stop_price: Decimal | None,
        notes: str | None,
    ) -> dict[str, Any]:
        with UnitOfWork(self._engine) as uow, log_context(order_id=order_id):
            try:
                modify_order(
                    uow,
                    order_id,
                    quantity=quantity,
                    price=price,
                    stop_price=stop_price,
                    notes=notes,
                    user_id=principal.subject,
                )
            except OrderNotFound as exc:
                raise NotFound(f"order {order_id} not found") from exc
            except InvalidOrderTerms as exc:
                raise InvalidRequest("Invalid modification", _field_errors(exc.violations)) from exc
            except InvalidTransition as exc:
                raise Conflict(f"the order cannot be modified: {exc}") from exc
            except InvalidCommand as exc:
                raise InvalidRequest(str(exc)) from exc
            answer = self._read(uow, order_id)
            uow.commit()
            return answer

    @staticmethod
    def _read(uow: UnitOfWork, order_id: str) -> dict[str, Any]:
        # The read model, not a repository: the answer is the order as the queries show it (with its executions),
        # read in the transaction that changed it, before its commit: the change exactly (the pipeline may move
        # the order as soon as it commits), and no transaction of its own (two round trips fewer per write).
        # Reads are the API's own; the commands never use the connection.
        order = queries.get_order(uow.connection, order_id)
        if order is None:  # pragma: no cover - just written in this unit of work
            raise NotFound(f"order {order_id} not found")
        return order
