"""The venue requests repository on every backend: recorded, read back, answered, moved, found by kind."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from common.orders.records import (
    REQUEST_ACCEPTED,
    REQUEST_DONE,
    REQUEST_NEW,
    REQUEST_PENDING,
    REQUEST_REJECTED,
    REQUEST_SENT,
    REQUEST_SKIPPED,
    terms_of,
)
from tests.contract.backends import UowFactory
from tests.support.orders import create_order

D = Decimal


def _order(uow_factory: UowFactory) -> str:
    order = create_order()
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        uow.commit()
    return order.id


def _record(
    uow_factory: UowFactory, order_id: str, *, kind: str = "REPLACE", status: str = REQUEST_PENDING, at: datetime
) -> str:
    request_id = str(uuid.uuid4())
    with uow_factory() as uow:
        uow.requests.record(
            request_id=request_id,
            order_id=order_id,
            kind=kind,
            terms={"quantity": D("150"), "price": D("190.12345678"), "stopPrice": None},
            status=status,
            reason="asked",
            created_by="tester",
            now=at,
        )
        uow.commit()
    return request_id


def test_a_request_reads_back_as_recorded_with_exact_terms(uow_factory: UowFactory) -> None:
    order_id = _order(uow_factory)
    request_id = str(uuid.uuid4())
    with uow_factory() as uow:
        uow.requests.record(
            request_id=request_id,
            order_id=order_id,
            kind="REPLACE",
            terms={"quantity": D("150"), "price": D("190.12345678"), "stopPrice": None},
            status=REQUEST_PENDING,
            reason=None,
            created_by="tester",
            now=datetime.now(UTC),
        )
        seen = uow.requests.get(request_id)  # in the transaction that wrote it
        assert seen is not None and seen.status == REQUEST_PENDING
        uow.commit()
    with uow_factory() as uow:
        uow.requests.lock([request_id, str(uuid.uuid4())])
        found = uow.requests.get(request_id)
        assert found is not None
        assert (found.order_id, found.kind, found.status, found.reason, found.created_by) == (
            order_id,
            "REPLACE",
            REQUEST_PENDING,
            None,
            "tester",
        )
        assert terms_of(found) == (D("150"), D("190.12345678"), None)
        assert uow.requests.get(str(uuid.uuid4())) is None


def test_an_answer_moves_an_open_request_of_that_order_only(uow_factory: UowFactory) -> None:
    order_id = _order(uow_factory)
    request_id = _record(uow_factory, order_id, status=REQUEST_SENT, at=datetime.now(UTC))
    now = datetime.now(UTC)
    with uow_factory() as uow:
        uow.requests.prefetch([request_id])
        assert not uow.requests.answer(str(uuid.uuid4()), request_id, REQUEST_ACCEPTED, None, now)
        assert not uow.requests.answer(order_id, str(uuid.uuid4()), REQUEST_ACCEPTED, None, now)
        assert uow.requests.answer(order_id, request_id, REQUEST_ACCEPTED, None, now)
        uow.commit()
    with uow_factory() as uow:
        assert uow.requests.answer(order_id, request_id, REQUEST_REJECTED, "venue says no", now)
        assert not uow.requests.answer(order_id, request_id, REQUEST_DONE, None, now)  # final in this transaction
        uow.commit()
    with uow_factory() as uow:
        assert not uow.requests.answer(order_id, request_id, REQUEST_DONE, None, now)  # final
        found = uow.requests.get(request_id)
        assert found is not None and (found.status, found.reason) == (REQUEST_REJECTED, "venue says no")


def test_set_status_moves_whatever_the_status_and_keeps_the_reason_unless_given(uow_factory: UowFactory) -> None:
    order_id = _order(uow_factory)
    request_id = _record(uow_factory, order_id, at=datetime.now(UTC))
    with uow_factory() as uow:
        uow.requests.set_status(request_id, REQUEST_SENT, datetime.now(UTC))
        found = uow.requests.get(request_id)
        assert found is not None and (found.status, found.reason) == (REQUEST_SENT, "asked")
        uow.commit()
    with uow_factory() as uow:
        uow.requests.set_status(request_id, REQUEST_SKIPPED, datetime.now(UTC), "order is CANCELED")
        uow.rollback()
        found = uow.requests.get(request_id)
        assert found is not None and found.status == REQUEST_SENT  # the rollback forgot the move
        uow.requests.set_status(request_id, REQUEST_DONE, datetime.now(UTC))
        uow.requests.set_status(request_id, REQUEST_SKIPPED, datetime.now(UTC), "moved on")  # even a final one
        uow.commit()
    with uow_factory() as uow:
        found = uow.requests.get(request_id)
        assert found is not None and (found.status, found.reason) == (REQUEST_SKIPPED, "moved on")


def test_latest_is_the_last_request_of_the_kind(uow_factory: UowFactory) -> None:
    order_id = _order(uow_factory)
    start = datetime.now(UTC) - timedelta(minutes=1)
    _record(uow_factory, order_id, kind=REQUEST_NEW, status=REQUEST_SENT, at=start)
    second = _record(uow_factory, order_id, kind=REQUEST_NEW, status=REQUEST_SENT, at=start + timedelta(seconds=1))
    _record(uow_factory, order_id, kind="CANCEL", at=start + timedelta(seconds=2))
    with uow_factory() as uow:
        latest = uow.requests.latest(order_id, REQUEST_NEW)
        assert latest is not None and latest.request_id == second
        assert uow.requests.latest(order_id, "REPLACE") is None
        assert uow.requests.latest(str(uuid.uuid4()), REQUEST_NEW) is None
        third = str(uuid.uuid4())
        uow.requests.record(
            request_id=third,
            order_id=order_id,
            kind=REQUEST_NEW,
            terms={},
            status=REQUEST_SENT,
            reason=None,
            created_by=None,
            now=start + timedelta(seconds=3),
        )
        latest = uow.requests.latest(order_id, REQUEST_NEW)  # this transaction's own counts
        assert latest is not None and latest.request_id == third


def test_a_rollback_forgets_a_recorded_request(uow_factory: UowFactory) -> None:
    order_id = _order(uow_factory)
    request_id = str(uuid.uuid4())
    with uow_factory() as uow:
        uow.requests.record(
            request_id=request_id,
            order_id=order_id,
            kind="CANCEL",
            terms={},
            status=REQUEST_PENDING,
            reason=None,
            created_by=None,
            now=datetime.now(UTC),
        )
        uow.rollback()
        assert uow.requests.get(request_id) is None
        uow.commit()
    with uow_factory() as uow:
        assert uow.requests.get(request_id) is None
