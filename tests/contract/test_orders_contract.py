"""The orders repository and the unit of work around it, on every backend: what the handlers rely on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from common import jsonutil
from common.domain import OrderEventType, OrderState
from tests.contract.backends import Backend, UowFactory
from tests.support.orders import create_order

D = Decimal
CREATED = OrderEventType.ORDER_CREATED.value


def test_an_added_order_reads_back_after_commit_with_its_events_numbered_from_one(
    backend: Backend, uow_factory: UowFactory
) -> None:
    order = create_order(quantity=D("100"), price=D("190.00"))
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id="m-1", user_id="tester")
        messages = uow.commit()
    assert [(m.type, m.routing_key, m.correlation_id) for m in messages] == [
        ("OrderUpdate", f"ACC-001.AAPL.{order.status.value}", order.id)
    ]
    body = jsonutil.loads(messages[0].body)
    assert (body["orderId"], body["state"], D(str(body["quantity"])), body["version"]) == (
        order.id,
        "NEW",
        D("100"),
        1,
    )
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id)
        assert loaded is not None and loaded is not order
        assert (loaded.state, loaded.quantity, loaded.price, loaded.version) == (OrderState.NEW, D("100"), D("190"), 1)
        assert (loaded.account_id, loaded.symbol, loaded.side, loaded.type) == (
            order.account_id,
            order.symbol,
            order.side,
            order.type,
        )
        assert loaded.created_at == order.created_at
    assert backend.event_sequences(order.id) == [(1, CREATED)]


def test_saved_changes_continue_the_sequence_and_carry_the_version(backend: Backend, uow_factory: UowFactory) -> None:
    order = create_order()
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        uow.commit()
    now = datetime.now(UTC)
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id, for_update=True)
        assert loaded is not None
        loaded.approve(["test"], now)
        uow.orders.save(loaded, correlation_id=order.id, message_id="m-2")
        uow.commit()
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id, for_update=True)
        assert loaded is not None and (loaded.state, loaded.version) == (OrderState.APPROVED, 2)
        loaded.mark_routed(str(uuid.uuid4()), now)
        uow.orders.save(loaded, correlation_id=order.id, message_id="m-3")
        uow.commit()
    sequences = backend.event_sequences(order.id)
    assert [s for s, _ in sequences] == [1, 2, 3]
    assert sequences[0][1] == CREATED
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id)
        assert loaded is not None and (loaded.state, loaded.version) == (OrderState.ROUTED, 3)


def test_the_events_of_one_transaction_chain_on_the_same_object(backend: Backend, uow_factory: UowFactory) -> None:
    order = create_order()
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        assert uow.orders.get(order.id) is order  # the new order is in the identity map
        order.approve(["test"], datetime.now(UTC))
        uow.orders.save(order, correlation_id=None, message_id=None)
        uow.commit()
    assert [s for s, _ in backend.event_sequences(order.id)] == [1, 2]
    with uow_factory() as uow:
        first = uow.orders.get(order.id, for_update=True)
        assert first is not None and uow.orders.get(order.id) is first
        first.mark_routed(str(uuid.uuid4()), datetime.now(UTC))
        uow.orders.save(first, correlation_id=None, message_id=None)
        again = uow.orders.get(order.id, for_update=True)
        assert again is first and again.state is OrderState.ROUTED  # the second message sees the first's change
        uow.commit()
    assert [s for s, _ in backend.event_sequences(order.id)] == [1, 2, 3]


def test_what_is_not_committed_is_invisible_elsewhere_and_forgotten_by_rollback(
    backend: Backend, uow_factory: UowFactory
) -> None:
    order = create_order()
    with uow_factory() as writer:
        writer.orders.add(order, correlation_id=None, message_id=None)
        with uow_factory() as reader:
            assert reader.orders.get(order.id) is None
        writer.rollback()
        assert writer.orders.get(order.id) is None
        assert writer.commit() == []  # nothing left to write or send
        # The unit of work goes on after a rollback.
        writer.orders.add(create_order(), correlation_id=None, message_id=None)
        assert len(writer.commit()) == 1
    with uow_factory() as reader:
        assert reader.orders.get(order.id) is None
    assert backend.event_sequences(order.id) == []


def test_leaving_the_block_without_commit_rolls_back(uow_factory: UowFactory) -> None:
    order = create_order()
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
    with uow_factory() as uow:
        assert uow.orders.get(order.id) is None


def test_only_what_subscribers_see_is_announced(backend: Backend, uow_factory: UowFactory) -> None:
    order = create_order()
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        uow.commit()
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id, for_update=True)
        assert loaded is not None
        status = loaded.status
        loaded.approve(["test"], datetime.now(UTC))  # a finer state: the public status stays
        assert loaded.status is status
        uow.orders.save(loaded, correlation_id=None, message_id=None)
        assert uow.commit() == []
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id, for_update=True)
        assert loaded is not None
        uow.orders.save(loaded, correlation_id=None, message_id=None)  # no new events: nothing written or sent
        assert uow.commit() == []
        loaded = uow.orders.get(order.id, for_update=True)  # a commit ends the transaction's identity map
        assert loaded is not None
        loaded.cancel_unrouted("enough", datetime.now(UTC), "tester")
        uow.orders.save(loaded, correlation_id=None, message_id=None)
        messages = uow.commit()
    assert [(m.type, m.routing_key) for m in messages] == [("OrderUpdate", "ACC-001.AAPL.CANCELED")]
    assert len(backend.event_sequences(order.id)) == 3


def test_an_update_with_an_execution_is_announced_whatever_changed(uow_factory: UowFactory) -> None:
    order = create_order()
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        uow.commit()
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id, for_update=True)
        assert loaded is not None
        loaded.approve(["test"], datetime.now(UTC))
        latest = {"executionId": "E-1", "quantity": D("0")}
        uow.orders.save(loaded, correlation_id=None, message_id=None, latest_execution=latest)
        messages = uow.commit()
    assert len(messages) == 1
    assert jsonutil.loads(messages[0].body)["latestExecution"]["executionId"] == "E-1"


def test_an_unknown_order_is_none_and_lock_skips_it(uow_factory: UowFactory) -> None:
    order = create_order()
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        uow.commit()
    missing = str(uuid.uuid4())
    with uow_factory() as uow:
        uow.orders.lock([missing, order.id])
        locked = uow.orders.get(order.id, for_update=True)
        assert locked is not None and uow.orders.get(order.id) is locked
        assert uow.orders.get(missing) is None and uow.orders.get(missing, for_update=True) is None


def test_an_idempotency_key_finds_its_order(uow_factory: UowFactory) -> None:
    key = f"client-{uuid.uuid4()}"
    order = create_order()
    order.client_order_id = key  # as intake books a decision under its id
    with uow_factory() as uow:
        assert uow.orders.find_by_client_order_id("ACC-001", key) is None
        uow.orders.add(order, correlation_id=None, message_id=None)
        assert uow.orders.find_by_client_order_id("ACC-001", key) is order  # in the transaction that booked it
        uow.commit()
    with uow_factory() as uow:
        uow.orders.prefetch_client_orders([("ACC-001", key), ("ACC-001", "no-such-key"), ("ACC-002", key)])
        found = uow.orders.find_by_client_order_id("ACC-001", key)
        assert found is not None and found.id == order.id
        assert uow.orders.get(order.id) is found
        assert uow.orders.find_by_client_order_id("ACC-001", "no-such-key") is None
        assert uow.orders.find_by_client_order_id("ACC-002", key) is None  # the key is the account's own


def test_creation_terms_are_those_the_order_was_created_with(uow_factory: UowFactory) -> None:
    order = create_order(quantity=D("100"), price=D("190.00"))
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        assert D(str((uow.orders.creation_terms(order.id) or {})["quantity"])) == D("100")
        uow.commit()
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id, for_update=True)
        assert loaded is not None
        loaded.modify_unrouted(D("150"), D("191.00"), None, datetime.now(UTC), "tester")
        uow.orders.save(loaded, correlation_id=None, message_id=None)
        uow.commit()
    with uow_factory() as uow:
        terms = uow.orders.creation_terms(order.id)
        assert terms is not None
        assert (D(str(terms["quantity"])), D(str(terms["price"])), terms["symbol"]) == (D("100"), D("190"), "AAPL")
        assert uow.orders.creation_terms(str(uuid.uuid4())) is None


def test_the_outbox_sends_what_was_added_in_order_once_committed(uow_factory: UowFactory) -> None:
    correlation = str(uuid.uuid4())
    with uow_factory() as uow:
        first = uow.outbox.add("oms", "risk.check", "RiskCheck", {"orderId": correlation, "version": 1}, correlation)
        second = uow.outbox.add(
            "broker",
            "orders.new",
            "NewOrderRequest",
            {"price": D("190.10")},
            correlation,
            headers={"x-oms-user": "tester"},
            message_id="given-id",
        )
        assert first.message_id and second.message_id == "given-id"
        messages = uow.commit()
        assert [(m.message_id, m.exchange, m.routing_key, m.type, m.correlation_id) for m in messages] == [
            (first.message_id, "oms", "risk.check", "RiskCheck", correlation),
            ("given-id", "broker", "orders.new", "NewOrderRequest", correlation),
        ]
        assert dict(messages[1].headers) == {"x-oms-user": "tester"}
        assert jsonutil.loads(messages[1].body) == {"price": D("190.10")}  # Decimal-exact
        assert uow.commit() == []  # sent once
        uow.outbox.add("oms", "risk.check", "RiskCheck", {"orderId": correlation}, correlation)
        uow.rollback()
        assert uow.commit() == []  # a rollback forgets what was added


def test_after_commit_actions_run_once_committed_never_after_a_rollback(uow_factory: UowFactory) -> None:
    ran: list[str] = []
    with uow_factory() as uow:
        uow.after_commit(lambda: ran.append("rolled back"))
        uow.rollback()
        uow.after_commit(lambda: ran.append("committed"))
        assert ran == []
        uow.commit()
        assert ran == ["committed"]
        uow.commit()
    assert ran == ["committed"]


def test_reference_data_reads_accounts_and_instruments(uow_factory: UowFactory) -> None:
    with uow_factory() as uow:
        uow.reference.prefetch(["ACC-001", "ACC-003", "NO-SUCH"], ["AAPL", "HALT", "NOPE"])
        account = uow.reference.account("ACC-003")
        assert account is not None and (account.account_type, account.active, account.base_currency) == (
            "CASH",
            True,
            "USD",
        )
        assert uow.reference.account("NO-SUCH") is None and uow.reference.account("ACC-404") is None
        apple = uow.reference.instrument("AAPL")
        assert apple is not None
        assert (apple.tick_size, apple.lot_size, apple.tradable, apple.reference_price) == (
            D("0.01"),
            D("1"),
            True,
            D("190"),
        )
        assert apple.session_timezone == "America/New_York"
        halted = uow.reference.instrument("HALT")
        assert halted is not None and not halted.tradable
        assert uow.reference.instrument("NOPE") is None


def test_the_events_form_a_hash_chain_that_ends_at_the_orders_head(backend: Backend, uow_factory: UowFactory) -> None:
    from common.store.event_chain import GENESIS, check_chain

    order = create_order(quantity=D("1.50"), price=D("190.00"), strategy_id="stratégie 1E+2 \u2603")
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id="m-1", user_id="tester")
        order.approve(["test"], datetime.now(UTC))
        uow.orders.save(order, correlation_id=order.id, message_id="m-1")
        uow.commit()
    with uow_factory() as uow:  # a change rolled back leaves the chain and its head as they were
        loaded = uow.orders.get(order.id, for_update=True)
        assert loaded is not None
        loaded.mark_routed(str(uuid.uuid4()), datetime.now(UTC))
        uow.orders.save(loaded, correlation_id=order.id, message_id="m-x")
        uow.rollback()
    with uow_factory() as uow:
        loaded = uow.orders.get(order.id, for_update=True)
        assert loaded is not None
        loaded.mark_routed(str(uuid.uuid4()), datetime.now(UTC))
        uow.orders.save(loaded, correlation_id=order.id, message_id="m-2")
        uow.commit()

    head, events = backend.event_chain(order.id)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert head == events[-1].hash and len(set(e.hash for e in events)) == 3
    assert check_chain(order.id, head, events) == []
