"""The message catalogue (common/messages/) is the one place messages are spelled, and it holds together.

- every kind's example loads with its schema, and every builder makes a body its kind's schema loads;
- every stage consumes exactly the kinds the catalogue gives its queue, each with ``handle_<kind>``;
- no routing key, exchange name or header name of the catalogue is written anywhere in common/, services/ or
  tools/ outside common/messages/ (docstrings aside): code names the catalogue's constants instead.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from common import jsonutil
from common.domain import ExecType, ExecutionReportData, FillDelta, OrderStatus
from common.messages import bodies, catalogue, exchanges, headers
from common.messages.catalogue import KINDS, RETIRED_KINDS, STAGES, MessageKind
from common.messaging.topology import STAGE_QUEUES, VENUE_QUEUE
from common.runtime.stage import StageSpec
from services.execution_handler.spec import SPEC as EXECUTION_HANDLER
from services.intake.spec import SPEC as INTAKE
from services.risk_gate.spec import SPEC as RISK_GATE
from services.router.spec import SPEC as ROUTER
from services.settlement.spec import SPEC as SETTLEMENT
from tests.support.orders import create_order, mark_routed

REPO = Path(__file__).resolve().parents[2]
SPECS = (INTAKE, RISK_GATE, ROUTER, EXECUTION_HANDLER, SETTLEMENT)
NOW = datetime(2026, 11, 30, 14, 30, tzinfo=UTC)


def _load(kind: MessageKind, body: Any) -> dict[str, Any]:
    """``body`` as it travels (JSON text) loaded with the kind's schema."""
    assert kind.schema is not None
    loaded: dict[str, Any] = kind.schema.load(jsonutil.loads(jsonutil.dumps(body)))
    return loaded


# --------------------------------------------------------------------------- the kinds


@pytest.mark.parametrize("kind", [*KINDS, *RETIRED_KINDS], ids=lambda k: k.type)
def test_every_kind_has_a_schema_and_a_live_kind_an_example_it_loads(kind: MessageKind) -> None:
    assert kind.schema is not None, f"{kind.type} has no schema: docs/messages.md could not list its fields"
    assert kind.exchange in (*exchanges.TOPIC_EXCHANGES, *exchanges.DIRECT_EXCHANGES)
    if kind.retired is None:
        assert kind.example is not None and kind.summary and kind.producers and kind.consumers
        _load(kind, jsonutil.loads(kind.example))


def test_kinds_are_told_apart_by_exchange_and_key_and_by_type() -> None:
    every = [*KINDS, *RETIRED_KINDS]
    assert len({(k.exchange, k.routing_key) for k in every}) == len(every)
    assert len({k.type for k in every}) == len(every)


def test_a_kind_whose_key_varies_has_a_binding_and_cannot_be_sent_without_its_key() -> None:
    sent: list[tuple[Any, ...]] = []

    class Sink:
        def add(self, *args: Any, **kwargs: Any) -> None:
            sent.append((*args, kwargs))

    for kind in KINDS:
        assert kind.fixed_key == (kind.binding is None), kind.type
    with pytest.raises(ValueError, match="needs its routing key"):
        catalogue.PRICE.send(Sink(), {}, None)
    catalogue.PRICE.send(Sink(), {}, None, routing_key=bodies.price_routing_key("AAPL"))
    catalogue.RISK_CHECK.send(Sink(), {"orderId": "o"}, "o", headers=headers.user_headers("alice"))
    assert sent == [
        ("marketdata", "prices.AAPL", "Price", {}, None, {"headers": None}),
        ("oms", "risk.check.0", "RiskCheck", {"orderId": "o"}, "o", {"headers": {"x-oms-user": "alice"}}),  # "o": 0
    ]


# --------------------------------------------------------------------------- the builders


def _report(exec_type: ExecType = ExecType.PARTIAL_FILL) -> ExecutionReportData:
    return ExecutionReportData(
        execution_id="SIM-1",
        order_id="o-1",
        exec_type=exec_type,
        last_qty=Decimal(40),
        last_px=Decimal("190.2"),
        cum_qty=Decimal(40),
        leaves_qty=Decimal(60),
        fees=Decimal("0.38"),
        venue="SIM",
        timestamp=NOW,
    )


def test_the_builders_make_bodies_their_kinds_load() -> None:
    order = mark_routed(create_order(now=NOW), NOW)
    request_id = "0193e7a2-5b1d-7000-8000-0a1b2c3d4e5f"
    _load(catalogue.RISK_CHECK, bodies.risk_check_body(order))
    assert _load(catalogue.RISK_CHECK, bodies.risk_check_body(order, request_id))["request_id"] == request_id
    _load(catalogue.ROUTE_NEW, bodies.route_new_body(order.id))
    _load(catalogue.ROUTE_CANCEL, bodies.route_cancel_body(order.id, request_id))
    _load(catalogue.ROUTE_REPLACE, bodies.route_replace_body(order.id, request_id))
    for kind in catalogue.BROKER_REQUESTS:
        _load(kind, bodies.broker_request_body(order, request_id))
    terms = (Decimal("80.00000000"), Decimal("191.50000000"), None)
    replace = bodies.broker_request_body(order, request_id, terms)
    assert (replace["quantity"], replace["price"]) == (Decimal(80), Decimal("191.5"))  # written plainly
    _load(catalogue.REPLACE_REQUEST, replace)

    fill = FillDelta("SIM-1", Decimal(40), Decimal("190.2"), Decimal("0.38"))
    assert _load(catalogue.FILL_BOOKED, bodies.fill_booked_body(order, _report(), fill))["reversal"] is False
    bust = FillDelta("SIM-2", Decimal(-40), Decimal("190.2"), Decimal("-0.38"), True, "SIM-1")
    undo = _load(catalogue.FILL_BOOKED, bodies.fill_booked_body(order, _report(ExecType.TRADE_CANCEL), bust))
    assert (undo["execution_id"], undo["quantity"], undo["fees"]) == ("SIM-1", Decimal(40), Decimal("0.38"))

    latest = bodies.latest_execution_body("0193e7a2-6c00-7000-8000-000000000001", fill, _report())
    update = _load(catalogue.ORDER_UPDATE, bodies.order_update_body(order, latest))
    assert update["latest_execution"]["execution_id"] == "SIM-1"
    _load(catalogue.ORDER_UPDATE, bodies.order_update_body(order, None))
    assert bodies.order_update_routing_key(order) == f"ACC-001.AAPL.{OrderStatus.PENDING.value}"

    _load(catalogue.PRICE, bodies.price_body("AAPL", Decimal("190.21"), NOW))
    assert bodies.price_routing_key("AAPL") == "prices.AAPL"


def test_the_position_update_carries_the_confirmation_and_instruction_field_for_field() -> None:
    confirmation = {
        "id": "c-1",
        "order_id": "o-1",
        "execution_id": "SIM-1",
        "account_id": "ACC-001",
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": Decimal(40),
        "price": Decimal("190.2"),
        "gross_amount": Decimal(7608),
        "fees": Decimal("0.38"),
        "net_amount": Decimal("7608.38"),
        "currency": "USD",
        "venue": "SIM",
        "trade_date": NOW.date(),
        "settlement_date": NOW.date(),
        "reversal": False,
    }
    instruction = {
        "id": "i-1",
        "securities_direction": "RECEIVE",
        "cash_amount": Decimal("-7608.38"),
        "currency": "USD",
        "status": "PENDING",
    }
    body = bodies.position_update_body(
        confirmation,
        instruction,
        quantity=Decimal(140),
        delta=Decimal(40),
        average_cost=Decimal("188.5"),
        realized_pnl=Decimal(0),
        timestamp=NOW,
    )
    loaded = _load(catalogue.POSITION_UPDATE, body)
    assert loaded["confirmation"] == _load(catalogue.TRADE_CONFIRMATION, bodies.trade_confirmation_body(confirmation))
    assert loaded["instruction"]["cash_direction"] == "PAY"
    assert loaded["instruction"] == _load(
        catalogue.SETTLEMENT_INSTRUCTION, bodies.settlement_instruction_body(instruction, confirmation)
    )


# --------------------------------------------------------------------------- stages and queues


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _name_of(handler: Any) -> str:
    return str(getattr(getattr(handler, "func", handler), "__name__", ""))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.stage)
def test_a_stage_consumes_its_queues_kinds_each_with_handle_kind(spec: StageSpec) -> None:
    assert set(spec.handlers) == set(catalogue.consumed_by(spec.stage))
    assert sorted(spec.queue.routing_keys) == sorted(k.routing_key for k in spec.handlers)
    for kind, handler in spec.handlers.items():
        assert _name_of(handler) == f"handle_{_snake(kind.type)}", f"{spec.stage}: {kind.type}"


def test_every_stage_has_a_queue_and_every_queue_kind_a_stage() -> None:
    assert [s.stage for s in SPECS] == list(STAGES) == list(STAGE_QUEUES)
    staged = {k.routing_key for k in KINDS if k.stage is not None}
    assert staged == {key for queue in STAGE_QUEUES.values() for key in queue.routing_keys}
    assert VENUE_QUEUE.routing_keys == tuple(k.routing_key for k in catalogue.BROKER_REQUESTS)
    assert catalogue.INTERNAL_KEYS <= staged


def test_a_spec_whose_kinds_are_not_its_queues_is_refused() -> None:
    with pytest.raises(ValueError, match="its queue takes"):
        StageSpec(stage="router", handlers={catalogue.ROUTE_NEW: ROUTER.handlers[catalogue.ROUTE_NEW]})


# --------------------------------------------------------------------------- no literal outside the catalogue

SCANNED = ("common", "services", "tools")
CATALOGUE_PACKAGE = REPO / "common" / "messages"
# "oms" is an exchange and also the product's name (the JWT issuer, the compose project, the distribution), and
# "broker" one and also a dependency a health check names: these count only where a message is addressed, as an
# argument of these calls or an ``exchange=`` keyword.
AMBIGUOUS = {exchanges.OMS_EXCHANGE, exchanges.BROKER_EXCHANGE}
ADDRESSING_CALLS = re.compile(r"publish|exchange|^add$|^send$|^bind$|Message$|^json$")


def _spelled() -> dict[str, str]:
    """Every name the catalogue owns: value -> what it is."""
    names: dict[str, str] = {}
    for kind in (*KINDS, *RETIRED_KINDS):
        if kind.fixed_key:
            names[kind.routing_key] = f"the routing key of {kind.type}"
        if kind.binding is not None and kind.binding not in ("#", "*"):
            names[kind.binding] = f"the binding of {kind.type}"
    for name in (*exchanges.TOPIC_EXCHANGES, *exchanges.DIRECT_EXCHANGES):
        names[name] = "an exchange"
    for name in headers.HEADER_SUMMARIES:
        names[name] = "a header"
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _addressing(tree: ast.AST) -> set[int]:
    """The string constants that address a message: arguments of publishing calls, ``exchange=`` keywords."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if ADDRESSING_CALLS.search(_callee(node)):
                ids |= {id(arg) for arg in node.args if isinstance(arg, ast.Constant)}
            ids |= {id(kw.value) for kw in node.keywords if kw.arg == "exchange" and isinstance(kw.value, ast.Constant)}
    return ids


def _sources() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if CATALOGUE_PACKAGE not in path.parents:
                yield path


def test_no_routing_key_exchange_or_header_is_spelled_outside_the_catalogue() -> None:
    names = _spelled()
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skipped, addressing = _docstrings(tree), _addressing(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skipped:
                continue
            if node.value in names and (node.value not in AMBIGUOUS or id(node) in addressing):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r} ({names[node.value]})")
    assert not found, "spelled outside common/messages/ (use the catalogue's constant):\n" + "\n".join(found)


def test_the_scan_finds_what_it_looks_for() -> None:
    source = 'publisher.publish_json("oms", "execution.report", "ExecutionReport", {}, headers={"x-oms-user": u})\n'
    tree = ast.parse(source)
    names, addressing = _spelled(), _addressing(tree)
    hits = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and n.value in names and (n.value not in AMBIGUOUS or id(n) in addressing)
    ]
    assert hits == ["oms", "execution.report", "x-oms-user"]
    issuer = ast.parse('ISSUER = "oms"\n')
    assert not [n for n in ast.walk(issuer) if isinstance(n, ast.Constant) and id(n) in _addressing(issuer)]
