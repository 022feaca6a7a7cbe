"""The simulated venue's book: order types, time in force, partial fills, cancel/replace, rejects."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from common import jsonutil
from common.contracts import ExecutionReportSchema
from common.domain.enums import ExecType, OrderType, Side, TimeInForce
from services.venue_sim.book import Book, BookRules, BrokerRequest, Report
from services.venue_sim.prices import InstrumentSpec, Market

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
D = Decimal
E = ExecType


def _book(**rules: Any) -> Book:
    market = Market(
        [
            InstrumentSpec("AAPL", D("190.00"), D("0.01"), D("1")),
            InstrumentSpec("VOD", D("70.00"), D("0.02"), D("100")),
        ],
        seed=42,
    )
    counter = itertools.count(1)
    return Book(market, BookRules(**rules), new_id=lambda: f"EX-{next(counter)}")


_ids = itertools.count(1)


def _request(**fields: Any) -> BrokerRequest:
    values: dict[str, Any] = {
        "order_id": "ORD-1",
        "request_id": f"REQ-{next(_ids)}",
        "account_id": "ACC-001",
        "symbol": "AAPL",
        "side": Side.BUY,
        "type": OrderType.MARKET,
        "quantity": D("100"),
        "time_in_force": TimeInForce.DAY,
    }
    values.update(fields)
    return BrokerRequest(**values)


def _types(reports: list[Report]) -> list[ExecType]:
    return [r.exec_type for r in reports]


def test_market_order_is_acknowledged_then_filled_at_the_reference_price() -> None:
    book = _book()
    new = _request()
    reports = book.new_order(new, NOW)
    assert _types(reports) == [E.NEW, E.FILL]
    ack, fill = reports
    assert (ack.cum_qty, ack.leaves_qty, ack.last_qty, ack.avg_px) == (D(0), D(100), D(0), None)
    assert fill.last_qty == fill.cum_qty == fill.order_qty == D("100")
    assert fill.last_px == fill.avg_px == D("190.00")
    assert fill.leaves_qty == 0
    assert fill.fees == D("9.50")  # 100 * 190 * 0.0005
    assert ack.broker_order_id == fill.broker_order_id == "SIM-1"
    assert ack.request_id == fill.request_id == new.request_id
    assert len({r.execution_id for r in reports}) == 2


def test_fees_are_rounded_to_the_cent() -> None:
    book = _book(fee_rate=D("0.0005"))
    book.market.set_price("AAPL", D("190.37"))
    fill = book.new_order(_request(quantity=D("7")), NOW)[-1]
    assert fill.fees == D("0.67")  # 7 * 190.37 * 0.0005 = 0.666295


@pytest.mark.parametrize(
    ("side", "limit", "fills"),
    [
        (Side.BUY, "190.00", True),
        (Side.BUY, "195.00", True),
        (Side.BUY, "189.99", False),
        (Side.SELL, "190.00", True),
        (Side.SELL, "185.00", True),
        (Side.SELL, "190.01", False),
    ],
)
def test_limit_trades_only_when_marketable_at_the_reference_price(side: Side, limit: str, fills: bool) -> None:
    book = _book()
    reports = book.new_order(_request(side=side, type=OrderType.LIMIT, price=D(limit)), NOW)
    if fills:
        assert _types(reports) == [E.NEW, E.FILL]
        assert reports[-1].last_px == D("190.00")  # the limit or better
        assert reports[-1].price == D(limit)
    else:
        assert _types(reports) == [E.NEW]
        assert reports[0].leaves_qty == 100
        assert "ORD-1" in book.working


def test_resting_limit_fills_when_the_price_moves_through_it() -> None:
    book = _book()
    book.new_order(_request(type=OrderType.LIMIT, price=D("185.00")), NOW)
    book.market.set_price("AAPL", D("186.00"))
    assert book.on_tick(NOW) == []
    book.market.set_price("AAPL", D("184.50"))
    reports = book.on_tick(NOW)
    assert _types(reports) == [E.FILL]
    assert reports[0].last_px == D("184.50")
    assert "ORD-1" not in book.working


@pytest.mark.parametrize(
    ("side", "below", "through"), [(Side.BUY, "194.99", "195.10"), (Side.SELL, "185.01", "184.90")]
)
def test_stop_triggers_when_the_price_reaches_it_and_then_trades_as_market(
    side: Side, below: str, through: str
) -> None:
    book = _book()
    stop = D("195.00") if side is Side.BUY else D("185.00")
    assert _types(book.new_order(_request(side=side, type=OrderType.STOP, stop_price=stop), NOW)) == [E.NEW]
    book.market.set_price("AAPL", D(below))
    assert book.on_tick(NOW) == []
    book.market.set_price("AAPL", D(through))
    reports = book.on_tick(NOW)
    assert _types(reports) == [E.FILL]
    assert reports[0].last_px == D(through)
    assert reports[0].stop_price == stop


def test_stop_already_reached_on_arrival_trades_at_once() -> None:
    reports = _book().new_order(_request(type=OrderType.STOP, stop_price=D("180.00")), NOW)
    assert _types(reports) == [E.NEW, E.FILL]


def test_stop_limit_becomes_a_limit_once_triggered() -> None:
    book = _book()
    book.new_order(_request(side=Side.SELL, type=OrderType.STOP_LIMIT, stop_price=D("185.00"), price=D("184.00")), NOW)
    book.market.set_price("AAPL", D("183.50"))  # triggers, but 183.50 is below the sell limit of 184
    assert book.on_tick(NOW) == []
    assert book.working["ORD-1"].triggered
    book.market.set_price("AAPL", D("184.20"))  # back above the stop: a triggered stop stays triggered
    reports = book.on_tick(NOW)
    assert _types(reports) == [E.FILL]
    assert reports[0].last_px == D("184.20")


def test_ioc_fills_what_is_marketable_now_and_cancels_the_rest() -> None:
    book = _book(partial_fills=4)
    reports = book.new_order(_request(time_in_force=TimeInForce.IOC), NOW)
    assert _types(reports) == [E.NEW, E.PARTIAL_FILL, E.CANCELED]
    assert reports[1].last_qty == D("25")
    assert (reports[2].cum_qty, reports[2].leaves_qty) == (D("25"), D("0"))
    assert book.on_tick(NOW) == []


def test_ioc_that_is_not_marketable_is_canceled_without_a_fill() -> None:
    reports = _book().new_order(_request(type=OrderType.LIMIT, price=D("100.00"), time_in_force=TimeInForce.IOC), NOW)
    assert _types(reports) == [E.NEW, E.CANCELED]
    assert (reports[1].cum_qty, reports[1].leaves_qty) == (D(0), D(0))


def test_fok_fills_whole_in_one_execution_even_with_partial_fills() -> None:
    reports = _book(partial_fills=4).new_order(_request(time_in_force=TimeInForce.FOK), NOW)
    assert _types(reports) == [E.NEW, E.FILL]
    assert reports[1].last_qty == D("100")


def test_fok_that_is_not_marketable_is_canceled_never_partly_filled() -> None:
    reports = _book(partial_fills=4).new_order(
        _request(type=OrderType.LIMIT, price=D("189.00"), time_in_force=TimeInForce.FOK), NOW
    )
    assert _types(reports) == [E.NEW, E.CANCELED]
    assert reports[-1].cum_qty == 0


def test_ioc_stop_waits_for_its_trigger_then_gets_one_chance() -> None:
    book = _book(partial_fills=2)
    reports = book.new_order(_request(type=OrderType.STOP, stop_price=D("191.00"), time_in_force=TimeInForce.IOC), NOW)
    assert _types(reports) == [E.NEW]
    book.market.set_price("AAPL", D("191.00"))
    assert _types(book.on_tick(NOW)) == [E.PARTIAL_FILL, E.CANCELED]


def test_partial_fills_come_one_slice_per_tick_and_add_up() -> None:
    book = _book(partial_fills=3)
    reports = book.new_order(_request(), NOW)
    book.market.set_price("AAPL", D("191.00"))
    reports += book.on_tick(NOW)
    book.market.set_price("AAPL", D("192.00"))
    reports += book.on_tick(NOW)
    assert _types(reports) == [E.NEW, E.PARTIAL_FILL, E.PARTIAL_FILL, E.FILL]
    assert [r.last_qty for r in reports[1:]] == [D("33"), D("33"), D("34")]
    assert [r.cum_qty for r in reports[1:]] == [D("33"), D("66"), D("100")]
    assert [r.leaves_qty for r in reports[1:]] == [D("67"), D("34"), D("0")]
    # (33*190 + 33*191 + 34*192) / 100
    assert reports[-1].avg_px == D("191.01000000")
    assert book.on_tick(NOW) == []


def test_partial_slices_are_whole_lots() -> None:
    book = _book(partial_fills=3)
    reports = book.new_order(_request(symbol="VOD", quantity=D("1000")), NOW)
    reports += book.on_tick(NOW) + book.on_tick(NOW)
    assert [r.last_qty for r in reports[1:]] == [D("300"), D("300"), D("400")]


def test_cancel_a_working_order() -> None:
    book = _book()
    book.new_order(_request(type=OrderType.LIMIT, price=D("150.00")), NOW)
    cancel = _request(type=OrderType.LIMIT, price=D("150.00"))
    reports = book.cancel(cancel, NOW)
    assert _types(reports) == [E.PENDING_CANCEL, E.CANCELED]
    assert [r.request_id for r in reports] == [cancel.request_id] * 2
    assert reports[0].leaves_qty == 100
    assert (reports[1].leaves_qty, reports[1].cum_qty) == (D(0), D(0))
    assert book.on_tick(NOW) == []


def test_cancel_after_a_partial_fill_keeps_the_executed_quantity() -> None:
    book = _book(partial_fills=2)
    book.new_order(_request(), NOW)
    reports = book.cancel(_request(), NOW)
    assert _types(reports) == [E.PENDING_CANCEL, E.CANCELED]
    assert (reports[1].cum_qty, reports[1].leaves_qty, reports[1].avg_px) == (D("50"), D("0"), D("190.00"))


def test_cancel_of_a_filled_order_is_too_late_and_of_an_unknown_one_is_refused() -> None:
    book = _book()
    book.new_order(_request(), NOW)
    late = book.cancel(_request(), NOW)
    assert _types(late) == [E.CANCEL_REJECTED]
    assert late[0].reason == "too late to cancel"
    assert (late[0].cum_qty, late[0].leaves_qty, late[0].broker_order_id) == (D("100"), D("0"), "SIM-1")
    unknown = book.cancel(_request(order_id="ORD-X"), NOW)
    assert _types(unknown) == [E.CANCEL_REJECTED]
    assert unknown[0].reason == "unknown order"


def test_replace_changes_the_terms_in_force() -> None:
    book = _book()
    book.new_order(_request(type=OrderType.LIMIT, price=D("150.00")), NOW)
    replace = _request(type=OrderType.LIMIT, quantity=D("200"), price=D("160.00"))
    reports = book.replace(replace, NOW)
    assert _types(reports) == [E.PENDING_REPLACE, E.REPLACED]
    assert (reports[0].order_qty, reports[0].price) == (D("100"), D("150.00"))  # old terms while pending
    assert (reports[1].order_qty, reports[1].price, reports[1].leaves_qty) == (D("200"), D("160.00"), D("200"))
    assert [r.request_id for r in reports] == [replace.request_id] * 2


def test_replace_to_a_marketable_price_trades_at_once() -> None:
    book = _book()
    book.new_order(_request(type=OrderType.LIMIT, price=D("150.00")), NOW)
    reports = book.replace(_request(type=OrderType.LIMIT, price=D("191.00")), NOW)
    assert _types(reports) == [E.PENDING_REPLACE, E.REPLACED, E.FILL]
    assert reports[-1].last_px == D("190.00")


def test_replace_at_or_below_the_executed_quantity_completes_the_order() -> None:
    book = _book(partial_fills=2)
    book.new_order(_request(), NOW)  # 50 of 100 trade at once
    reports = book.replace(_request(quantity=D("40")), NOW)
    assert _types(reports) == [E.PENDING_REPLACE, E.REPLACED]
    replaced = reports[-1]
    assert (replaced.cum_qty, replaced.leaves_qty, replaced.order_qty) == (D("50"), D("0"), D("50"))
    assert book.on_tick(NOW) == []
    assert book.cancel(_request(), NOW)[0].reason == "too late to cancel"


def test_replace_refused_when_unknown_finished_or_changing_the_side() -> None:
    book = _book()
    assert book.replace(_request(order_id="ORD-X"), NOW)[0].reason == "unknown order"
    book.new_order(_request(order_id="ORD-F"), NOW)
    late = book.replace(_request(order_id="ORD-F", quantity=D("200")), NOW)
    assert _types(late) == [E.REPLACE_REJECTED]
    assert late[0].reason == "too late to replace"
    book.new_order(_request(order_id="ORD-L", type=OrderType.LIMIT, price=D("150.00")), NOW)
    flipped = book.replace(_request(order_id="ORD-L", side=Side.SELL, type=OrderType.LIMIT, price=D("150")), NOW)
    assert _types(flipped) == [E.REPLACE_REJECTED]
    assert book.working["ORD-L"].side is Side.BUY
    no_limit = book.replace(_request(order_id="ORD-L", type=OrderType.LIMIT, price=None), NOW)
    assert _types(no_limit) == [E.REPLACE_REJECTED]
    assert book.working["ORD-L"].price == D("150.00")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"symbol": "HALT"}, "symbol HALT is not accepted by the venue"),
        ({"quantity": D("10001")}, "quantity 10001 exceeds the venue maximum 10000"),
        ({"type": OrderType.LIMIT}, "LIMIT order needs a positive limit price"),
        ({"type": OrderType.STOP_LIMIT, "price": D("1")}, "STOP_LIMIT order needs a positive stop price"),
        ({"quantity": D("0")}, "quantity must be positive"),
    ],
)
def test_rejects(fields: dict[str, Any], reason: str) -> None:
    book = _book(reject_symbols=frozenset({"HALT"}), max_qty=D("10000"))
    reports = book.new_order(_request(**fields), NOW)
    assert _types(reports) == [E.REJECTED]
    assert reports[0].reason == reason
    assert (reports[0].cum_qty, reports[0].leaves_qty) == (D(0), D(0))
    assert book.order("ORD-1") is None


def test_a_new_order_id_seen_before_is_a_duplicate() -> None:
    book = _book()
    assert book.new_order(_request(type=OrderType.LIMIT, price=D("150.00")), NOW)
    assert book.new_order(_request(type=OrderType.LIMIT, price=D("150.00")), NOW) == []
    assert len(book.working) == 1


def test_broker_order_ids_are_stable_per_order() -> None:
    book = _book()
    first = book.new_order(_request(order_id="A", type=OrderType.LIMIT, price=D("150.00")), NOW)
    second = book.new_order(_request(order_id="B"), NOW)
    cancel = book.cancel(_request(order_id="A"), NOW)
    assert {r.broker_order_id for r in first + cancel} == {"SIM-1"}
    assert {r.broker_order_id for r in second} == {"SIM-2"}


def test_every_report_body_satisfies_the_public_contract() -> None:
    book = _book(partial_fills=2)
    reports = book.new_order(_request(), NOW) + book.cancel(_request(), NOW) + book.cancel(_request(order_id="Z"), NOW)
    reports += book.new_order(_request(order_id="R", quantity=D("0")), NOW)
    for report in reports:
        wire = jsonutil.loads(jsonutil.dumps(report.to_body()))
        loaded = ExecutionReportSchema().load(wire)
        assert loaded["exec_type"] == report.exec_type
        assert loaded["cum_qty"] == report.cum_qty
        assert loaded["timestamp"] == NOW
        assert wire["venue"] == "SIM"


def _filled_ids(reports: list[Report]) -> list[str]:
    return [r.order_id for r in reports if r.exec_type in (E.FILL, E.PARTIAL_FILL)]


def test_a_tick_trades_exactly_the_orders_the_price_reaches_in_arrival_order() -> None:
    book = _book()
    for limit in (189, 180, 186, 184, 188, 185, 187, 181, 183, 182):
        book.new_order(_request(order_id=f"B{limit}", type=OrderType.LIMIT, price=D(limit)), NOW)
    for limit in (191, 195):
        book.new_order(_request(order_id=f"S{limit}", side=Side.SELL, type=OrderType.LIMIT, price=D(limit)), NOW)
    for stop in (185, 184, 183):
        book.new_order(_request(order_id=f"SS{stop}", side=Side.SELL, type=OrderType.STOP, stop_price=D(stop)), NOW)
    book.new_order(_request(order_id="BS193", type=OrderType.STOP, stop_price=D("193")), NOW)
    assert book.on_tick(NOW) == []

    book.market.set_price("AAPL", D("186.00"))
    assert _filled_ids(book.on_tick(NOW)) == ["B189", "B186", "B188", "B187"]
    book.market.set_price("AAPL", D("184.00"))
    assert _filled_ids(book.on_tick(NOW)) == ["B184", "B185", "SS185", "SS184"]
    book.market.set_price("AAPL", D("193.00"))
    assert _filled_ids(book.on_tick(NOW)) == ["S191", "BS193"]
    assert sorted(book.working) == ["B180", "B181", "B182", "B183", "S195", "SS183"]


def test_a_replaced_price_is_the_only_one_that_counts() -> None:
    book = _book()
    book.new_order(_request(order_id="UP", type=OrderType.LIMIT, price=D("150.00")), NOW)
    book.new_order(_request(order_id="DOWN", type=OrderType.LIMIT, price=D("180.00")), NOW)
    book.replace(_request(order_id="UP", type=OrderType.LIMIT, price=D("170.00")), NOW)
    book.replace(_request(order_id="DOWN", type=OrderType.LIMIT, price=D("160.00")), NOW)
    book.market.set_price("AAPL", D("175.00"))
    assert book.on_tick(NOW) == []  # DOWN's old 180 no longer trades
    book.market.set_price("AAPL", D("165.00"))
    assert _filled_ids(book.on_tick(NOW)) == ["UP"]
    book.market.set_price("AAPL", D("155.00"))
    assert _filled_ids(book.on_tick(NOW)) == ["DOWN"]
    assert book.on_tick(NOW) == []


def test_canceled_orders_do_not_pile_up_in_the_index() -> None:
    book = _book()
    for n in range(1000):
        book.new_order(_request(order_id=f"O{n}", type=OrderType.LIMIT, price=D("100.00")), NOW)
        book.cancel(_request(order_id=f"O{n}"), NOW)
    book.new_order(_request(order_id="LIVE", type=OrderType.LIMIT, price=D("100.00")), NOW)
    book.on_tick(NOW)
    assert book._symbols["AAPL"].entries() <= 2 * len(book.working) + 64
    book.market.set_price("AAPL", D("99.00"))
    assert _filled_ids(book.on_tick(NOW)) == ["LIVE"]
