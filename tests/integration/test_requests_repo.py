"""The buffered order-requests repository: what a batch writes, what it reads back, and its round trips."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from common.orders.records import (
    REQUEST_ACCEPTED,
    REQUEST_DONE,
    REQUEST_NEW,
    REQUEST_PENDING,
    REQUEST_REJECTED,
    REQUEST_SENT,
    REQUEST_SKIPPED,
)
from common.store.requests_repo import answer_request, load_request, record_request, set_request_status
from common.store.uow import UnitOfWork
from tests.support.db import statements
from tests.support.orders import create_order, request_row, store

pytestmark = pytest.mark.integration

D = Decimal
REQUEST_CANCEL = "CANCEL"


def stored_request(
    engine: Engine, status: str = REQUEST_SENT, kind: str = REQUEST_NEW, reason: str | None = None
) -> tuple[str, str]:
    """An order with one request row: (order id, request id)."""
    order_id = store(engine, create_order())
    request_id = str(uuid.uuid4())
    with engine.begin() as connection:
        record_request(
            connection,
            request_id=request_id,
            order_id=order_id,
            kind=kind,
            terms={"quantity": D("100"), "price": D("190.00")},
            status=status,
            reason=reason,
            created_by="tester",
            now=datetime.now(UTC) - timedelta(seconds=1),
        )
    return order_id, request_id


def test_answers_of_a_batch_are_one_statement_whatever_its_size(engine: Engine) -> None:
    pairs = [stored_request(engine) for _ in range(12)]
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        with statements(engine) as sent:
            requests = uow.requests
            requests.prefetch(r for _, r in pairs)
            for order_id, request_id in pairs:
                assert requests.answer(order_id, request_id, REQUEST_ACCEPTED, None, now)
            uow.commit()
    order_requests = [s for s in sent if "order_requests" in s]
    assert len(order_requests) == 2, order_requests  # the prefetch and the answers
    for _, request_id in pairs:
        row = request_row(engine, request_id)
        assert (row["status"], row["updated_at"]) == (REQUEST_ACCEPTED, now)


def test_new_rows_of_a_batch_are_one_statement_and_read_back_as_written(engine: Engine) -> None:
    orders = [store(engine, create_order()) for _ in range(5)]
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in orders]
    with UnitOfWork(engine) as uow:
        with statements(engine) as sent:
            requests = uow.requests
            for order_id, request_id in zip(orders, ids, strict=True):
                requests.record(
                    request_id=request_id,
                    order_id=order_id,
                    kind=REQUEST_NEW,
                    terms={"quantity": D("100.5"), "price": D("190.00"), "stopPrice": None, "timeInForce": "DAY"},
                    status=REQUEST_SENT,
                    reason=None,
                    created_by=None,
                    now=now,
                )
            # What the batch buffered is seen without a round trip.
            found = requests.get(ids[0])
            assert found is not None and (found.status, found.order_id) == (REQUEST_SENT, orders[0])
            uow.commit()
    assert len([s for s in sent if "order_requests" in s]) == 1
    row = request_row(engine, ids[0])
    assert row["terms"] == {"quantity": D("100.5"), "price": D("190.00"), "stopPrice": None, "timeInForce": "DAY"}
    assert (row["kind"], row["status"], row["reason"], row["created_by"]) == (REQUEST_NEW, REQUEST_SENT, None, None)
    assert row["created_at"] == row["updated_at"] == now


def test_an_answer_never_moves_a_final_request_nor_another_orders(engine: Engine) -> None:
    done_order, done = stored_request(engine, REQUEST_DONE)
    _, other = stored_request(engine)
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        requests = uow.requests
        assert not requests.answer(done_order, done, REQUEST_ACCEPTED, None, now)
        assert not requests.answer(done_order, other, REQUEST_ACCEPTED, None, now)  # not this order's
        assert not requests.answer(done_order, str(uuid.uuid4()), REQUEST_ACCEPTED, None, now)  # unknown
        uow.commit()
    assert request_row(engine, done)["status"] == REQUEST_DONE
    assert request_row(engine, other)["status"] == REQUEST_SENT


def test_answers_to_one_request_in_one_batch_end_as_they_would_one_by_one(engine: Engine) -> None:
    in_order, in_order_request = stored_request(engine, kind=REQUEST_CANCEL)
    overtaken, overtaken_request = stored_request(engine, kind=REQUEST_CANCEL)
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        requests = uow.requests
        assert requests.answer(in_order, in_order_request, REQUEST_ACCEPTED, None, now)
        assert requests.answer(in_order, in_order_request, REQUEST_DONE, None, now)
        # CANCELED overtook PENDING_CANCEL: the late acceptance finds the request final.
        assert requests.answer(overtaken, overtaken_request, REQUEST_DONE, None, now)
        assert not requests.answer(overtaken, overtaken_request, REQUEST_ACCEPTED, None, now)
        uow.commit()
    assert request_row(engine, in_order_request)["status"] == REQUEST_DONE
    assert request_row(engine, overtaken_request)["status"] == REQUEST_DONE


def test_an_answer_keeps_the_reason_unless_it_gives_one(engine: Engine) -> None:
    order_id, kept = stored_request(engine, REQUEST_SENT, reason="asked by the trader")
    _, rejected = stored_request(engine, REQUEST_SENT, reason="asked by the trader")
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        requests = uow.requests
        requests.prefetch([kept, rejected])
        assert requests.answer(order_id, kept, REQUEST_ACCEPTED, None, now)
        assert requests.answer(request_row(engine, rejected)["order_id"], rejected, REQUEST_REJECTED, "too late", now)
        uow.commit()
    assert (request_row(engine, kept)["status"], request_row(engine, kept)["reason"]) == (
        REQUEST_ACCEPTED,
        "asked by the trader",
    )
    assert (request_row(engine, rejected)["status"], request_row(engine, rejected)["reason"]) == (
        REQUEST_REJECTED,
        "too late",
    )


def test_a_request_made_final_after_the_prefetch_is_not_moved(engine: Engine) -> None:
    """The prefetch takes no lock: the write itself keeps the rule that an answer never moves a final request."""
    order_id, request_id = stored_request(engine)
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        requests = uow.requests
        requests.prefetch([request_id])
        with engine.begin() as other:
            set_request_status(other, request_id, REQUEST_REJECTED, now, "refused meanwhile")
        assert requests.answer(order_id, request_id, REQUEST_ACCEPTED, None, now)  # as far as it knows
        uow.commit()
    row = request_row(engine, request_id)
    assert (row["status"], row["reason"]) == (REQUEST_REJECTED, "refused meanwhile")


def test_a_locked_read_sees_the_batch_and_set_status_is_unconditional(engine: Engine) -> None:
    order_id, pending = stored_request(engine, REQUEST_PENDING, kind=REQUEST_CANCEL)
    _, final = stored_request(engine, REQUEST_DONE, kind=REQUEST_CANCEL)
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        requests = uow.requests
        requests.set_status(pending, REQUEST_SENT, now)
        found = requests.get(pending)  # read after the move was buffered: it shows
        assert found is not None and (found.status, found.kind, found.terms["price"]) == (
            REQUEST_SENT,
            REQUEST_CANCEL,
            D("190.00"),
        )
        assert requests.answer(order_id, pending, REQUEST_ACCEPTED, None, now)
        assert requests.get(pending).status == REQUEST_ACCEPTED  # type: ignore[union-attr]
        requests.set_status(final, REQUEST_SKIPPED, now, "whatever it was")
        assert requests.get(str(uuid.uuid4())) is None
        uow.commit()
    assert request_row(engine, pending)["status"] == REQUEST_ACCEPTED
    assert (request_row(engine, final)["status"], request_row(engine, final)["reason"]) == (
        REQUEST_SKIPPED,
        "whatever it was",
    )


def test_a_guarded_answer_to_a_row_then_locked_final_is_dropped(engine: Engine) -> None:
    order_id, request_id = stored_request(engine)
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        requests = uow.requests
        requests.prefetch([request_id])
        with engine.begin() as other:
            set_request_status(other, request_id, REQUEST_DONE, now)
        assert requests.answer(order_id, request_id, REQUEST_ACCEPTED, None, now)
        found = requests.get(request_id)  # locked: the answer is seen not to apply
        assert found is not None and found.status == REQUEST_DONE
        assert not requests.answer(order_id, request_id, REQUEST_ACCEPTED, None, now)
        uow.commit()
    assert request_row(engine, request_id)["status"] == REQUEST_DONE


def test_a_rollback_forgets_what_was_buffered(engine: Engine) -> None:
    order_id, request_id = stored_request(engine)
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        requests = uow.requests
        assert requests.answer(order_id, request_id, REQUEST_ACCEPTED, None, now)
        uow.rollback()
        assert uow.requests is requests
        assert requests.answer(order_id, request_id, REQUEST_REJECTED, "no", now)  # read afresh: still SENT
        uow.commit()
    assert request_row(engine, request_id)["status"] == REQUEST_REJECTED


def test_the_functions_keep_their_behaviour(engine: Engine) -> None:
    order_id, request_id = stored_request(engine, REQUEST_PENDING, kind=REQUEST_CANCEL, reason="first")
    now = datetime.now(UTC)
    with engine.begin() as connection:
        found = load_request(connection, request_id)
        assert found is not None and (found.status, found.reason, found.terms["quantity"]) == (
            REQUEST_PENDING,
            "first",
            D("100"),
        )
        set_request_status(connection, request_id, REQUEST_SENT, now)
        assert answer_request(connection, order_id, request_id, REQUEST_DONE, None, now)
        assert not answer_request(connection, order_id, request_id, REQUEST_ACCEPTED, None, now)
        assert load_request(connection, str(uuid.uuid4())) is None
    row = request_row(engine, request_id)
    assert (row["status"], row["reason"]) == (REQUEST_DONE, "first")
