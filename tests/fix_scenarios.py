"""FIX 4.2 Appendix D order-state-change matrices (D1-D16, plus D8R and D17) as replayable data.

Each scenario starts from an order that the OMS has created, approved and routed (FIX "New Order(X)").
Its steps are either a ``Request`` the OMS issues (cancel or replace, named by a symbolic id such as "Y")
or a ``Report`` the venue sends, each followed by what the order must look like afterwards (``Expect``).

The unit tests drive ``Order`` directly with these steps; the end-to-end tests replay the same data through
the real pipeline, with a venue player that answers each request with the reports that follow it. The
player maps symbolic request ids to real ``requestId`` values (``Report.answers`` names the request a
report answers) and invents execution ids. Prices are not in the FIX tables; they are chosen here so that
every average is exact. Only the main path of each matrix is encoded (not its "if rejected" rows), and where
this OMS deliberately differs from FIX's wire OrdStatus the step's note says so.

This is a plain data module: no test functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from common.domain.enums import ExecType, OrderState, OrderStatus, OrderType, RequestKind, Side, TimeInForce

D = Decimal
X = ExecType
St = OrderState
Pu = OrderStatus
LIMIT_PRICE = D("110")


@dataclass(frozen=True)
class Request:
    """OMS -> venue: a cancel or a replace (``quantity``/``price`` are the replace's complete new terms).

    ``refused``: the OMS itself refuses the request (``InvalidTransition``), so the venue never sees it.
    """

    kind: RequestKind
    request: str
    quantity: Decimal | None = None
    price: Decimal | None = None
    refused: bool = False


@dataclass(frozen=True)
class Report:
    """Venue -> OMS: one execution report, as the venue would send it.

    ``order_qty``/``price`` are the terms in force at the venue; ``answers`` names the request answered.
    ``fix_ord_status`` is the OrdStatus FIX puts on the wire, kept for reference.
    """

    exec_type: ExecType
    order_qty: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    last_qty: Decimal = D(0)
    last_px: Decimal | None = None
    avg_px: Decimal | None = None
    price: Decimal | None = LIMIT_PRICE
    answers: str | None = None
    fix_ord_status: str = ""


@dataclass(frozen=True)
class Expect:
    """The order after a step: internal state, public status, quantity in force, cum, leaves, average."""

    state: OrderState
    status: OrderStatus
    quantity: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    avg_px: Decimal | None
    price: Decimal | None = LIMIT_PRICE


@dataclass(frozen=True)
class Step:
    action: Request | Report
    expect: Expect
    note: str = ""


@dataclass(frozen=True)
class Scenario:
    ref: str
    title: str
    steps: tuple[Step, ...]
    quantity: Decimal = D(10000)
    price: Decimal = LIMIT_PRICE
    side: Side = Side.BUY
    type: OrderType = OrderType.LIMIT
    time_in_force: TimeInForce = TimeInForce.DAY


def _rep(
    exec_type: ExecType,
    order_qty: int,
    cum: int,
    leaves: int,
    last: int = 0,
    px: str | None = None,
    avg: str | None = None,
    answers: str | None = None,
    fix: str = "",
) -> Report:
    return Report(
        exec_type=exec_type, order_qty=D(order_qty), cum_qty=D(cum), leaves_qty=D(leaves), last_qty=D(last),
        last_px=None if px is None else D(px), avg_px=None if avg is None else D(avg), answers=answers,
        fix_ord_status=fix,
    )


def _exp(
    state: OrderState, status: OrderStatus, qty: int, cum: int, leaves: int, avg: str | None,
    price: Decimal | None = LIMIT_PRICE,
) -> Expect:
    return Expect(state, status, D(qty), D(cum), D(leaves), None if avg is None else D(avg), price)


def _step(action: Request | Report, expect: Expect, note: str = "") -> Step:
    return Step(action, expect, note)


def _cancel(request: str) -> Request:
    return Request(RequestKind.CANCEL, request)


def _replace(request: str, quantity: int, price: str = "110", refused: bool = False) -> Request:
    return Request(RequestKind.REPLACE, request, D(quantity), D(price), refused)


_ACK = _step(_rep(X.NEW, 10000, 0, 10000, fix="New"), _exp(St.OPEN, Pu.OPEN, 10000, 0, 10000, None))
_PF_1000 = _step(
    _rep(X.PARTIAL_FILL, 10000, 1000, 9000, 1000, "100", "100", fix="Partially Filled"),
    _exp(St.PARTIALLY_FILLED, Pu.PARTIALLY_FILLED, 10000, 1000, 9000, "100"),
)
_PF_2000 = _step(
    _rep(X.PARTIAL_FILL, 10000, 2000, 8000, 2000, "100", "100", fix="Partially Filled"),
    _exp(St.PARTIALLY_FILLED, Pu.PARTIALLY_FILLED, 10000, 2000, 8000, "100"),
)
PF, PFS = St.PARTIALLY_FILLED, Pu.PARTIALLY_FILLED

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("D1", "Vanilla: filled order", (
        _ACK,
        _PF_2000,
        _step(_rep(X.PARTIAL_FILL, 10000, 3000, 7000, 1000, "103", "101", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 3000, 7000, "101")),
        _step(_rep(X.FILL, 10000, 10000, 0, 7000, "101", "101", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "101")),
    )),
    Scenario("D2", "Vanilla: part-filled day order, done for day", (
        _ACK,
        _PF_2000,
        _step(_rep(X.PARTIAL_FILL, 10000, 3000, 7000, 1000, "103", "101", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 3000, 7000, "101")),
        _step(_rep(X.EXPIRED, 10000, 3000, 0, avg="101", fix="Done for Day"),
              _exp(St.EXPIRED, Pu.CANCELED, 10000, 3000, 0, "101"),
              "FIX 'Done for Day' is reported as EXPIRED: DAY orders end at the session close"),
    )),
    Scenario("D3", "Cancel request issued for a zero-filled order", (
        _ACK,
        _step(_cancel("Y"), _exp(St.OPEN, Pu.OPEN, 10000, 0, 10000, None),
              "a cancel is only a request until the venue answers"),
        _step(_rep(X.PENDING_CANCEL, 10000, 0, 10000, answers="Y", fix="Pending Cancel"),
              _exp(St.PENDING_CANCEL, Pu.OPEN, 10000, 0, 10000, None)),
        _step(_rep(X.CANCELED, 10000, 0, 0, answers="Y", fix="Canceled"),
              _exp(St.CANCELED, Pu.CANCELED, 10000, 0, 0, None)),
    )),
    Scenario("D4", "Cancel request issued for a part-filled order; executions occur whilst the cancel is active", (
        _ACK,
        _PF_2000,
        _step(_cancel("Y"), _exp(PF, PFS, 10000, 2000, 8000, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 5000, 5000, 3000, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 5000, 5000, "100"), "this execution passes the cancel request"),
        _step(_rep(X.PENDING_CANCEL, 10000, 5000, 5000, avg="100", answers="Y", fix="Pending Cancel"),
              _exp(St.PENDING_CANCEL, PFS, 10000, 5000, 5000, "100"),
              "pending cancel takes precedence over partially filled"),
        _step(_rep(X.PARTIAL_FILL, 10000, 6000, 4000, 1000, "106", "101", fix="Pending Cancel"),
              _exp(St.PENDING_CANCEL, PFS, 10000, 6000, 4000, "101"), "execution whilst pending cancel"),
        _step(_rep(X.CANCELED, 10000, 6000, 0, avg="101", answers="Y", fix="Canceled"),
              _exp(St.CANCELED, Pu.CANCELED, 10000, 6000, 0, "101"),
              "canceled takes precedence over partially filled"),
    )),
    Scenario("D5", "Cancel request issued for an order that becomes filled before the cancel can be accepted", (
        _ACK,
        _PF_2000,
        _step(_cancel("Y"), _exp(PF, PFS, 10000, 2000, 8000, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 5000, 5000, 3000, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 5000, 5000, "100")),
        _step(_rep(X.PENDING_CANCEL, 10000, 5000, 5000, avg="100", answers="Y", fix="Pending Cancel"),
              _exp(St.PENDING_CANCEL, PFS, 10000, 5000, 5000, "100")),
        _step(_rep(X.FILL, 10000, 10000, 0, 5000, "102", "101", fix="Pending Cancel"),
              _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "101"),
              "the OMS shows FILLED at once (nothing is left to cancel); FIX keeps Pending Cancel on the wire"),
        _step(_rep(X.CANCEL_REJECTED, 10000, 10000, 0, avg="101", answers="Y", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "101"), "too late to cancel"),
    )),
    Scenario("D6", "Zero-filled order, cancel/replace request issued to increase order qty", (
        _ACK,
        _step(_replace("Y", 11000), _exp(St.OPEN, Pu.OPEN, 10000, 0, 10000, None)),
        _step(_rep(X.PENDING_REPLACE, 10000, 0, 10000, answers="Y", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, Pu.OPEN, 10000, 0, 10000, None)),
        _step(_rep(X.REPLACED, 11000, 0, 11000, answers="Y", fix="New"),
              _exp(St.OPEN, Pu.OPEN, 11000, 0, 11000, None), "the new quantity is in force once confirmed"),
        _step(_rep(X.PARTIAL_FILL, 11000, 1000, 10000, 1000, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 11000, 1000, 10000, "100")),
        _step(_rep(X.FILL, 11000, 11000, 0, 10000, "101.1", "101", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 11000, 11000, 0, "101")),
    )),
    Scenario("D7", "Part-filled order, replace to increase qty; execution occurs whilst pending replace", (
        _ACK,
        _PF_1000,
        _step(_replace("Y", 12000), _exp(PF, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PENDING_REPLACE, 10000, 1000, 9000, avg="100", answers="Y", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 1100, 8900, 100, "111", "101", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1100, 8900, "101"), "fills use the old terms until replaced"),
        _step(_rep(X.REPLACED, 12000, 1100, 10900, avg="101", answers="Y", fix="Partially Filled"),
              _exp(PF, PFS, 12000, 1100, 10900, "101")),
        _step(_rep(X.FILL, 12000, 12000, 0, 10900, "101", "101", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 12000, 12000, 0, "101")),
    )),
    Scenario("D8", "Filled order followed by a cancel/replace request to increase order quantity", (
        _ACK,
        _step(_rep(X.FILL, 10000, 10000, 0, 10000, "100", "100", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "100")),
        _step(_replace("Y", 12000, refused=True), _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "100"),
              "this OMS refuses requests on a terminal order; FIX's remaining rows need the request (see D8R)"),
    )),
    Scenario("D8R", "D8 with the replace crossing the fill: the venue accepts an increase of a filled order", (
        _ACK,
        _step(_replace("Y", 12000), _exp(St.OPEN, Pu.OPEN, 10000, 0, 10000, None)),
        _step(_rep(X.FILL, 10000, 10000, 0, 10000, "100", "100", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "100"), "the fill passes the replace request"),
        _step(_rep(X.PENDING_REPLACE, 10000, 10000, 0, avg="100", answers="Y", fix="Pending Replace"),
              _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "100"), "filled stays filled while the venue decides"),
        _step(_rep(X.REPLACED, 12000, 10000, 2000, avg="100", answers="Y", fix="Partially Filled"),
              _exp(PF, PFS, 12000, 10000, 2000, "100"), "FIX D8: the confirmed increase reopens the order"),
        _step(_rep(X.FILL, 12000, 12000, 0, 2000, "106", "101", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 12000, 12000, 0, "101")),
    )),
    Scenario("D9", "Cancel/replace request (not for quantity change) is rejected as a fill has occurred", (
        _ACK,
        _PF_1000,
        _step(_replace("Y", 10000, "109"), _exp(PF, PFS, 10000, 1000, 9000, "100"), "amend the limit price"),
        _step(_rep(X.FILL, 10000, 10000, 0, 9000, "101", "100.9", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "100.9"), "the fill passes the replace request"),
        _step(_rep(X.REPLACE_REJECTED, 10000, 10000, 0, avg="100.9", answers="Y", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 10000, 10000, 0, "100.9"), "too late to cancel; the price never changed"),
    )),
    Scenario("D10", "Replace to decrease qty sent whilst execution is reported; requested qty exceeds cum qty", (
        _ACK,
        _PF_1000,
        _step(_replace("Y", 8000), _exp(PF, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 1500, 8500, 500, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 1500, 8500, "100"), "the execution passes the replace request"),
        _step(_rep(X.PENDING_REPLACE, 10000, 1500, 8500, avg="100", answers="Y", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1500, 8500, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 1600, 8400, 100, "100", "100", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1600, 8400, "100")),
        _step(_rep(X.REPLACED, 8000, 1600, 6400, avg="100", answers="Y", fix="Partially Filled"),
              _exp(PF, PFS, 8000, 1600, 6400, "100"), "partially filled takes precedence over replaced"),
        _step(_rep(X.FILL, 8000, 8000, 0, 6400, "101.25", "101", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 8000, 8000, 0, "101")),
    )),
    Scenario("D11", "Replace sent whilst execution is reported; requested qty equals cum qty", (
        _ACK,
        _step(_replace("Y", 7000), _exp(St.OPEN, Pu.OPEN, 10000, 0, 10000, None)),
        _step(_rep(X.PARTIAL_FILL, 10000, 7000, 3000, 7000, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 7000, 3000, "100")),
        _step(_rep(X.REPLACED, 7000, 7000, 0, avg="100", answers="Y", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 7000, 7000, 0, "100"), "filled takes precedence over replaced"),
    )),
    Scenario("D12", "Replace sent whilst execution is reported; requested qty below cum qty", (
        _ACK,
        _step(_replace("Y", 7000), _exp(St.OPEN, Pu.OPEN, 10000, 0, 10000, None)),
        _step(_rep(X.PARTIAL_FILL, 10000, 8000, 2000, 8000, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 8000, 2000, "100")),
        _step(_rep(X.REPLACED, 8000, 8000, 0, avg="100", answers="Y", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 8000, 8000, 0, "100"), "order qty is amended to cum qty"),
    )),
    Scenario("D13", "Replace sequence: one replace is accepted, then another is also accepted", (
        _ACK,
        _PF_1000,
        _step(_replace("Y", 8000), _exp(PF, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PENDING_REPLACE, 10000, 1000, 9000, avg="100", answers="Y", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 1500, 8500, 500, "100", "100", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1500, 8500, "100")),
        _step(_rep(X.REPLACED, 8000, 1500, 6500, avg="100", answers="Y", fix="Partially Filled"),
              _exp(PF, PFS, 8000, 1500, 6500, "100")),
        _step(_rep(X.PARTIAL_FILL, 8000, 3500, 4500, 2000, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 8000, 3500, 4500, "100")),
        _step(_replace("Z", 6000), _exp(PF, PFS, 8000, 3500, 4500, "100")),
        _step(_rep(X.PENDING_REPLACE, 8000, 3500, 4500, avg="100", answers="Z", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 8000, 3500, 4500, "100")),
        _step(_rep(X.REPLACED, 6000, 3500, 2500, avg="100", answers="Z", fix="Partially Filled"),
              _exp(PF, PFS, 6000, 3500, 2500, "100")),
        _step(_rep(X.FILL, 6000, 6000, 0, 2500, "102.4", "101", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 6000, 6000, 0, "101")),
    )),
    Scenario("D14", "Replace sequence: one replace is rejected before pending replace, another is accepted", (
        _ACK,
        _PF_1000,
        _step(_replace("Y", 8000), _exp(PF, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.REPLACE_REJECTED, 10000, 1000, 9000, avg="100", answers="Y", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 1500, 8500, 500, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 1500, 8500, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 3500, 6500, 2000, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 3500, 6500, "100")),
        _step(_replace("Z", 6000), _exp(PF, PFS, 10000, 3500, 6500, "100")),
        _step(_rep(X.PENDING_REPLACE, 10000, 3500, 6500, avg="100", answers="Z", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 3500, 6500, "100")),
        _step(_rep(X.REPLACED, 6000, 3500, 2500, avg="100", answers="Z", fix="Partially Filled"),
              _exp(PF, PFS, 6000, 3500, 2500, "100")),
        _step(_rep(X.PARTIAL_FILL, 6000, 5000, 1000, 1500, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 6000, 5000, 1000, "100")),
    )),
    Scenario("D15", "Replace sequence: one replace is rejected after pending replace, another is accepted", (
        _ACK,
        _PF_1000,
        _step(_replace("Y", 8000), _exp(PF, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PENDING_REPLACE, 10000, 1000, 9000, avg="100", answers="Y", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 1500, 8500, 500, "100", "100", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1500, 8500, "100")),
        _step(_rep(X.REPLACE_REJECTED, 10000, 1500, 8500, avg="100", answers="Y", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 1500, 8500, "100")),
        _step(_rep(X.PARTIAL_FILL, 10000, 3500, 6500, 2000, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 3500, 6500, "100")),
        _step(_replace("Z", 6000), _exp(PF, PFS, 10000, 3500, 6500, "100")),
        _step(_rep(X.PENDING_REPLACE, 10000, 3500, 6500, avg="100", answers="Z", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 3500, 6500, "100")),
        _step(_rep(X.REPLACED, 6000, 3500, 2500, avg="100", answers="Z", fix="Partially Filled"),
              _exp(PF, PFS, 6000, 3500, 2500, "100")),
        _step(_rep(X.PARTIAL_FILL, 6000, 5000, 1000, 1500, "100", "100", fix="Partially Filled"),
              _exp(PF, PFS, 6000, 5000, 1000, "100")),
    )),
    Scenario("D16", "Replace chaining: a replace followed immediately by another; broker processes sequentially", (
        _ACK,
        _step(_rep(X.PARTIAL_FILL, 10000, 1000, 9000, 1000, "107", "107", fix="Partially Filled"),
              _exp(PF, PFS, 10000, 1000, 9000, "107")),
        _step(_replace("Y", 8000), _exp(PF, PFS, 10000, 1000, 9000, "107")),
        _step(_replace("Z", 7000), _exp(PF, PFS, 10000, 1000, 9000, "107"), "chained while Y is unanswered"),
        _step(_rep(X.PENDING_REPLACE, 10000, 1000, 9000, avg="107", answers="Y", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1000, 9000, "107")),
        _step(_rep(X.REPLACED, 8000, 1000, 7000, avg="107", answers="Y", fix="Partially Filled"),
              _exp(PF, PFS, 8000, 1000, 7000, "107"), "Y in force; Z still outstanding"),
        _step(_rep(X.PENDING_REPLACE, 8000, 1000, 7000, avg="107", answers="Z", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 8000, 1000, 7000, "107")),
        _step(_rep(X.REPLACED, 7000, 1000, 6000, avg="107", answers="Z", fix="Partially Filled"),
              _exp(PF, PFS, 7000, 1000, 6000, "107")),
        _step(_rep(X.FILL, 7000, 7000, 0, 6000, "100", "101", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 7000, 7000, 0, "101")),
    )),
    Scenario("D17", "Replace chaining: broker processes both pending replaces before the replaces", (
        _ACK,
        _PF_1000,
        _step(_replace("Y", 8000), _exp(PF, PFS, 10000, 1000, 9000, "100")),
        _step(_replace("Z", 7000), _exp(PF, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PENDING_REPLACE, 10000, 1000, 9000, avg="100", answers="Y", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1000, 9000, "100")),
        _step(_rep(X.PENDING_REPLACE, 8000, 1000, 7000, avg="100", answers="Z", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 10000, 1000, 9000, "100"),
              "the venue quotes Y's qty; the OMS keeps the qty confirmed so far"),
        _step(_rep(X.REPLACED, 8000, 1000, 7000, avg="100", answers="Y", fix="Pending Replace"),
              _exp(St.PENDING_REPLACE, PFS, 8000, 1000, 7000, "100"), "Z is still pending at the venue"),
        _step(_rep(X.REPLACED, 7000, 1000, 6000, avg="100", answers="Z", fix="Partially Filled"),
              _exp(PF, PFS, 7000, 1000, 6000, "100")),
        _step(_rep(X.FILL, 7000, 7000, 0, 6000, "100", "100", fix="Filled"),
              _exp(St.FILLED, Pu.FILLED, 7000, 7000, 0, "100")),
    )),
)

SCENARIOS_BY_REF: dict[str, Scenario] = {scenario.ref: scenario for scenario in SCENARIOS}
