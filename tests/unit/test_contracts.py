"""The message contract refuses what the database cannot store and what no venue can send (issue 9, 3 and 4)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from marshmallow import ValidationError

from common import jsonutil
from common.contracts import (
    ExecutionReportSchema,
    FillBookedSchema,
    RiskCheckSchema,
    RouteCancelSchema,
    TradeDecisionSchema,
    decimal_problem,
    text_problem,
)
from tests.support.orders import trade_decision

D = Decimal


def wire(body: dict[str, Any]) -> Any:
    """The body as a consumer reads it off the wire."""
    return jsonutil.loads(jsonutil.dumps(body))


def errors_of(schema: Any, body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        schema.load(wire(body))
    messages = caught.value.messages
    assert isinstance(messages, dict)
    return messages


def report(exec_type: str = "PARTIAL_FILL", **fields: Any) -> dict[str, Any]:
    """A valid execution report of ``exec_type`` (a fill of 40 at 10.50 unless told), as the venue sends it."""
    body: dict[str, Any] = {
        "executionId": str(uuid.uuid4()),
        "orderId": str(uuid.uuid4()),
        "execType": exec_type,
        "cumQty": D(40),
        "leavesQty": D(60),
        "orderQty": D(100),
        "venue": "SIM",
        "timestamp": datetime(2026, 3, 2, 15, 0, tzinfo=UTC).isoformat(),
    }
    if exec_type in ("PARTIAL_FILL", "FILL", "TRADE_CANCEL"):
        body.update(lastQty=D(40), lastPx=D("10.50"), avgPx=D("10.50"), fees=D("0.21"))
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def fill_booked(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "orderId": str(uuid.uuid4()),
        "executionId": str(uuid.uuid4()),
        "accountId": "ACC-001",
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": D(40),
        "price": D("10.50"),
        "fees": D("0.21"),
        "venue": "SIM",
        "timestamp": datetime(2026, 3, 2, 15, 0, tzinfo=UTC).isoformat(),
        "reversal": False,
    }
    body.update(fields)
    return body


# ---- the helpers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", None),
        ("0E-40", None),
        ("-5", None),
        ("999999999999.99999999", None),
        ("1.50000000000000000000", None),  # trailing zeros are not precision
        ("1E+11", None),
        ("1E+12", "Must have at most 12 digits before the decimal point."),
        ("123456789012345678901234567890", "Must have at most 12 digits before the decimal point."),
        ("0.000000001", "Must have at most 8 decimal places."),
        ("1.000000000000000000000000000001", "Must have at most 8 decimal places."),  # beyond 28 digits
        ("1E-999999999", "Must have at most 8 decimal places."),
        ("1E+999999999", "Must have at most 12 digits before the decimal point."),
        ("NaN", "Must be a finite number."),
        ("-Infinity", "Must be a finite number."),
    ],
)
def test_decimal_problem_is_the_column_precision_without_rounding(value: str, problem: str | None) -> None:
    assert decimal_problem(D(value)) == problem


@pytest.mark.parametrize(
    ("text", "free_text", "problem"),
    [
        ("ACC-001", False, None),
        ("a\u0000b", False, "Must not contain NUL characters."),
        ("a\u0000b", True, "Must not contain NUL characters."),
        ("line\nbreak", False, "Must not contain control characters."),
        ("line\nbreak\tand tab\r", True, None),
        ("bell\u0007", True, "Must not contain control characters."),
        ("del\u007f", True, "Must not contain control characters."),
        ("lone \ud800", True, "Must be valid Unicode (no lone surrogates)."),
        ("caf\u00e9 \U0001f600", False, None),
    ],
)
def test_text_problem(text: str, free_text: bool, problem: str | None) -> None:
    assert text_problem(text, free_text=free_text) == problem


# ---- finding 3: NUL characters and over-long numbers are refused with a reason -----------------------------


def test_a_decision_with_a_nul_character_is_refused_naming_the_field() -> None:
    errors = errors_of(TradeDecisionSchema(), trade_decision(symbol="AA\u0000PL", notes="fine\u0000not"))
    assert errors == {
        "symbol": ["Must not contain NUL characters."],
        "notes": ["Must not contain NUL characters."],
    }


def test_a_decision_notes_may_hold_line_breaks_but_ids_may_not() -> None:
    loaded = TradeDecisionSchema().load(wire(trade_decision(notes="two\nlines\tand a tab")))
    assert loaded["notes"] == "two\nlines\tand a tab"
    assert errors_of(TradeDecisionSchema(), trade_decision(accountId="ACC\n001")) == {
        "accountId": ["Must not contain control characters."]
    }


def test_a_decision_more_precise_than_the_column_is_refused_but_size_stays_the_intakes_rule() -> None:
    errors = errors_of(TradeDecisionSchema(), trade_decision(type="LIMIT", price=D("190.123456789")))
    assert errors == {"price": ["Must have at most 8 decimal places."]}
    # Too large to store and not positive are business rules: the intake books a REJECTED order saying so.
    loaded = TradeDecisionSchema().load(wire(trade_decision(quantity=D("1E+13"))))
    assert loaded["quantity"] == D("1E+13")
    assert TradeDecisionSchema().load(wire(trade_decision(quantity=-5)))["quantity"] == D(-5)
    # A number no rule could even print is the wrong shape.
    assert errors_of(TradeDecisionSchema(), trade_decision(quantity=D("1E+999999999"))) == {
        "quantity": ["Must have at most 20 digits before the decimal point."]
    }


def test_a_report_with_a_30_digit_last_px_is_refused() -> None:
    errors = errors_of(ExecutionReportSchema(), report(lastPx=D("123456789012345678901234567890")))
    assert errors == {"lastPx": ["Must have at most 12 digits before the decimal point."]}


def test_a_report_timestamp_without_a_utc_instant_is_refused() -> None:
    errors = errors_of(ExecutionReportSchema(), report(timestamp="0001-01-01T00:00:00+05:00"))
    assert errors == {"timestamp": ["Not a representable instant."]}


def test_ids_in_every_contract_refuse_nul() -> None:
    assert "orderId" in errors_of(RiskCheckSchema(), {"orderId": "x\u0000", "version": 1})
    assert "reason" in errors_of(RouteCancelSchema(), {"orderId": "o", "requestId": "r", "reason": "\u0000"})
    assert "venue" in errors_of(FillBookedSchema(), fill_booked(venue="S\u0000M"))


def test_a_risk_check_version_fits_the_column() -> None:
    assert "version" in errors_of(RiskCheckSchema(), {"orderId": "o", "version": 2**40})


# ---- finding 4: impossible execution reports are refused ---------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"lastPx": D(-5)}, "lastPx", "Must not be negative."),
        ({"lastPx": D(0)}, "lastPx", "A PARTIAL_FILL needs a positive lastPx."),
        ({"lastQty": D(-10)}, "lastQty", "Must not be negative."),
        ({"lastQty": D(0)}, "lastQty", "A PARTIAL_FILL needs a positive lastQty."),
        ({"lastQty": None}, "lastQty", "A PARTIAL_FILL needs a positive lastQty."),
        ({"lastPx": None}, "lastPx", "A PARTIAL_FILL needs a positive lastPx."),
        ({"cumQty": D(-1)}, "cumQty", "Must not be negative."),
        ({"leavesQty": D(-1)}, "leavesQty", "Must not be negative."),
        ({"orderQty": D(-1)}, "orderQty", "Must not be negative."),
        ({"price": D(0)}, "price", "Must be positive."),
        ({"stopPrice": D(-1)}, "stopPrice", "Must be positive."),
        ({"avgPx": D(0)}, "avgPx", "Must be positive once cumQty is positive."),
        ({"avgPx": D(-1)}, "avgPx", "Must not be negative."),
        ({"fees": D(-1000)}, "fees", "Must be between -4.2 and 420 on a PARTIAL_FILL of lastQty × lastPx = 420."),
        ({"fees": D(421)}, "fees", "Must be between -4.2 and 420 on a PARTIAL_FILL of lastQty × lastPx = 420."),
    ],
)
def test_impossible_fill_figures_are_refused(changes: dict[str, Any], field: str, message: str) -> None:
    assert errors_of(ExecutionReportSchema(), report(**changes)) == {field: [message]}


def test_a_fill_may_carry_fees_from_a_small_rebate_to_the_whole_notional() -> None:
    for fees in ("-4.2", "0", "0.21", "420"):
        assert ExecutionReportSchema().load(wire(report("FILL", fees=D(fees))))["fees"] == D(fees)


def test_a_bust_names_its_execution_and_refunds_at_most_the_notional() -> None:
    bust = report("TRADE_CANCEL", execRefId="EXEC-1", fees=D("-0.20"))  # the handler test's refund
    assert ExecutionReportSchema().load(wire(bust))["fees"] == D("-0.20")
    assert errors_of(ExecutionReportSchema(), report("TRADE_CANCEL", fees=D("-0.20"))) == {
        "execRefId": ["A TRADE_CANCEL must name the execution it busts."]
    }
    assert errors_of(ExecutionReportSchema(), report("TRADE_CANCEL", execRefId="E", fees=D(-421))) == {
        "fees": ["Must be between -420 and 4.2 on a TRADE_CANCEL of lastQty × lastPx = 420."]
    }
    assert "lastQty" in errors_of(ExecutionReportSchema(), report("TRADE_CANCEL", execRefId="E", lastQty=D(0)))


@pytest.mark.parametrize("exec_type", ["NEW", "CANCELED", "REPLACED", "PENDING_CANCEL", "REJECTED", "EXPIRED"])
def test_a_report_without_a_trade_has_no_fees(exec_type: str) -> None:
    plain = report(exec_type, cumQty=D(0), leavesQty=D(100))
    assert ExecutionReportSchema().load(wire(plain))["exec_type"] == exec_type
    assert ExecutionReportSchema().load(wire({**plain, "fees": D(0), "avgPx": D(0), "lastPx": D(0)}))
    assert errors_of(ExecutionReportSchema(), {**plain, "fees": D("0.01")}) == {
        "fees": [f"A {exec_type} report has no trade: fees must be 0 or absent."]
    }


def test_what_the_simulated_venue_sends_is_accepted() -> None:
    # The venue's fill: fees = notional x 0.0005 rounded half up to the cent, avgPx to 8 places.
    fees = (D(33) * D("189.37") * D("0.0005")).quantize(D("0.01"))
    body = report("FILL", lastQty=D(33), lastPx=D("189.37"), avgPx=D("189.36999999"), fees=fees)
    assert ExecutionReportSchema().load(wire(body))["fees"] == fees


def test_a_fill_booked_needs_a_positive_quantity_and_price() -> None:
    assert FillBookedSchema().load(wire(fill_booked(reversal=True)))["reversal"] is True
    assert errors_of(FillBookedSchema(), fill_booked(quantity=D(0), price=D(-1))) == {
        "quantity": ["Must be positive."],
        "price": ["Must be positive."],
    }
    assert errors_of(FillBookedSchema(), fill_booked(fees=D("0.123456789"))) == {
        "fees": ["Must have at most 8 decimal places."]
    }
