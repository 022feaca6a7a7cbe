"""Property tests of every decoder (issue 9, finding 3): any bytes give an envelope or a reason, never an exception.

``decode`` is run for each stage's own spec (services/<stage>/spec.py ``SPEC``) on arbitrary bytes, arbitrary
JSON, deeply nested JSON, and valid bodies mutated field by field and byte by byte; the REST body parser and
the bounded JSON reader are fuzzed the same way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage
from flask import Request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from common import jsonutil
from common.contracts import text_problem
from common.runtime.stage import StageSpec, decode
from services.api.errors import InvalidRequest
from services.api.request_parser import ApiParser
from services.api.schemas import CreateOrderRequestSchema, UpdateOrderRequestSchema
from services.execution_handler.spec import SPEC as EXECUTION_HANDLER
from services.intake.spec import SPEC as INTAKE
from services.jobs.deadletters import DeadLetterMessage
from services.risk_gate.spec import SPEC as RISK_GATE
from services.router.spec import SPEC as ROUTER
from services.settlement.spec import SPEC as SETTLEMENT

SPECS = [INTAKE, RISK_GATE, ROUTER, EXECUTION_HANDLER, SETTLEMENT]
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC).isoformat()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class FakeMessage:
    """What ``decode`` reads of an aio_pika delivery."""

    body: bytes
    routing_key: str | None
    message_id: str | None = field(default_factory=lambda: str(uuid.uuid4()))
    correlation_id: str | None = None
    type: str | None = "Test"
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False


def valid_bodies() -> dict[str, dict[str, Any]]:
    """One valid body per routing key of every stage."""
    order_id = str(uuid.uuid4())
    return {
        "intake.decision": {
            "decisionId": "D-1",
            "accountId": "ACC-001",
            "symbol": "AAPL",
            "side": "BUY",
            "type": "LIMIT",
            "quantity": 100,
            "price": Decimal("190.00"),
            "notes": "a note",
        },
        "risk.check": {"orderId": order_id, "version": 1},
        "router.new": {"orderId": order_id},
        "router.cancel": {"orderId": order_id, "requestId": "R-1", "reason": "no longer wanted"},
        "router.replace": {"orderId": order_id, "requestId": "R-2"},
        "execution.report": {
            "executionId": "E-1",
            "orderId": order_id,
            "execType": "PARTIAL_FILL",
            "lastQty": 40,
            "lastPx": Decimal("10.50"),
            "cumQty": 40,
            "leavesQty": 60,
            "avgPx": Decimal("10.50"),
            "fees": Decimal("0.21"),
            "timestamp": NOW,
        },
        "settlement.fill": {
            "orderId": order_id,
            "executionId": "E-1",
            "accountId": "ACC-001",
            "symbol": "AAPL",
            "side": "BUY",
            "quantity": 40,
            "price": Decimal("10.50"),
            "fees": Decimal("0.21"),
            "timestamp": NOW,
            "reversal": False,
        },
    }


VALID = valid_bodies()
ROUTES = [(spec, key) for spec in SPECS for key in spec.kinds]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def check(spec: StageSpec, message: FakeMessage) -> str | None:
    """Decode; exactly one of envelope and error; an envelope holds only storable text. Returns the error."""
    delivery = decode(spec, cast(AbstractIncomingMessage, message))
    assert (delivery.envelope is None) != (delivery.error is None), delivery
    if delivery.envelope is not None:
        assert all(text_problem(s, free_text=True) is None for s in _strings(delivery.envelope.body))
    else:
        assert isinstance(delivery.error, str) and delivery.error
    return delivery.error


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
route_indexes = st.integers(min_value=0, max_value=len(ROUTES) - 1)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


# ---- the valid bodies are valid (else the mutations below would prove little) ----------------------------


@pytest.mark.parametrize(("spec", "key"), ROUTES, ids=[key for _, key in ROUTES])
def test_every_valid_body_decodes(spec: StageSpec, key: str) -> None:
    message = FakeMessage(jsonutil.dumps(VALID[key]).encode(), key)
    assert check(spec, message) is None


# ---- finding 3: the poison messages of the issue --------------------------------------------------------


@pytest.mark.parametrize("depth", [33, 1_000, 5_000, 50_000])
@pytest.mark.parametrize(("spec", "key"), ROUTES, ids=[key for _, key in ROUTES])
def test_a_deeply_nested_body_is_an_error_not_an_exception(spec: StageSpec, key: str, depth: int) -> None:
    nested = '{"orderId":' * depth + "1" + "}" * depth
    error = check(spec, FakeMessage(nested.encode(), key))
    assert error == "body refused: nested deeper than 32 levels"
    inside = jsonutil.dumps({**VALID[key], "extra": "X"}).replace('"X"', "[" * depth + "]" * depth)
    assert check(spec, FakeMessage(inside.encode(), key)) == "body refused: nested deeper than 32 levels"


def test_a_huge_body_is_an_error() -> None:
    body = jsonutil.dumps({**VALID["intake.decision"], "notes": "x" * (jsonutil.MAX_BODY_BYTES + 1)}).encode()
    assert check(INTAKE, FakeMessage(body, "intake.decision")) == (
        f"body too large: {len(body)} bytes (limit {jsonutil.MAX_BODY_BYTES})"
    )


@pytest.mark.parametrize(
    ("message_changes", "reason"),
    [
        ({"message_id": "m\u0000"}, "invalid properties: message_id: Must not contain NUL characters."),
        ({"message_id": "m" * 101}, "invalid properties: message_id is longer than 100 characters"),
        ({"correlation_id": "c\u0000"}, "invalid properties: correlation_id: Must not contain NUL characters."),
        ({"headers": {"x-oms-user": b"u\x00"}}, "invalid properties: header x-oms-user: Must not contain NUL"),
    ],
)
def test_properties_the_database_cannot_store_are_an_error(message_changes: dict[str, Any], reason: str) -> None:
    message = FakeMessage(jsonutil.dumps(VALID["intake.decision"]).encode(), "intake.decision")
    for name, value in message_changes.items():
        setattr(message, name, value)
    error = check(INTAKE, message)
    assert error is not None and error.startswith(reason)


def test_a_body_the_runtime_cannot_even_read_is_an_error() -> None:
    class Exploding(FakeMessage):
        @property
        def headers(self) -> dict[str, Any]:
            raise RecursionError("maximum recursion depth exceeded")

        @headers.setter
        def headers(self, value: dict[str, Any]) -> None:
            pass

    error = check(INTAKE, Exploding(jsonutil.dumps(VALID["intake.decision"]).encode(), "intake.decision"))
    assert error == "body could not be decoded: RecursionError: maximum recursion depth exceeded"


# ---- property tests: any input gives an envelope or an error -------------------------------------------


@FUZZ
@given(index=route_indexes, body=st.binary(max_size=2_000))
def test_arbitrary_bytes(index: int, body: bytes) -> None:
    spec, key = ROUTES[index]
    check(spec, FakeMessage(body, key))


@FUZZ
@given(index=route_indexes, value=json_values)
def test_arbitrary_json(index: int, value: Any) -> None:
    spec, key = ROUTES[index]
    check(spec, FakeMessage(jsonutil.dumps(value).encode(), key))


@FUZZ
@given(
    index=route_indexes,
    depth=st.integers(min_value=0, max_value=3_000),
    opener=st.sampled_from(["[", '{"a":', '{"orderId":[', '["\\"', "[{}, "]),
    closed=st.booleans(),
)
def test_deeply_nested_json(index: int, depth: int, opener: str, closed: bool) -> None:
    spec, key = ROUTES[index]
    closer = {"[": "]", '{"a":': "}", '{"orderId":[': "]}", '["\\"': "]", "[{}, ": "]"}[opener]
    text = opener * depth + "1" + (closer * depth if closed else "")
    check(spec, FakeMessage(text.encode(), key))


@FUZZ
@given(index=route_indexes, data=st.data())
def test_valid_bodies_mutated_field_by_field(index: int, data: st.DataObject) -> None:
    spec, key = ROUTES[index]
    body = dict(VALID[key])
    for name in data.draw(st.lists(st.sampled_from(sorted(body)), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            del body[name]
        else:
            body[name] = data.draw(json_values | st.text(alphabet=st.characters(max_codepoint=0x20)))
    check(spec, FakeMessage(jsonutil.dumps(body).encode(), key))


@FUZZ
@given(
    index=route_indexes,
    edits=st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=0, max_size=3)), min_size=1, max_size=5),
)
def test_valid_bodies_mutated_byte_by_byte(index: int, edits: list[tuple[int, bytes]]) -> None:
    spec, key = ROUTES[index]
    body = bytearray(jsonutil.dumps(VALID[key]).encode())
    for position, replacement in edits:
        at = position % (len(body) + 1)
        body[at : at + 1] = replacement
    check(spec, FakeMessage(bytes(body), key))


@FUZZ
@given(
    index=route_indexes,
    message_id=st.none() | st.text(max_size=120),
    correlation_id=st.none() | st.text(max_size=120),
    user=st.none() | st.text(max_size=120) | st.binary(max_size=120) | st.integers(),
    routing_key=st.none() | st.text(max_size=20),
)
def test_arbitrary_properties(
    index: int, message_id: str | None, correlation_id: str | None, user: Any, routing_key: str | None
) -> None:
    spec, key = ROUTES[index]
    message = FakeMessage(
        jsonutil.dumps(VALID[key]).encode(),
        routing_key if routing_key is not None else key,
        message_id=message_id,
        correlation_id=correlation_id,
        headers={} if user is None else {"x-oms-user": user},
    )
    check(spec, message)


# ---- the bounded JSON reader ---------------------------------------------------------------------------


@FUZZ
@given(value=json_values, limit=st.integers(min_value=0, max_value=6))
def test_nesting_exceeds_is_the_true_depth(value: Any, limit: int) -> None:
    text = jsonutil.dumps(value)
    assert jsonutil.nesting_exceeds(text, limit) == (_depth(value) > limit)
    assert jsonutil.nesting_exceeds(text.encode(), limit) == (_depth(value) > limit)


@FUZZ
@given(text=st.text(alphabet='[]{}"\\,:a1 ', max_size=200) | st.text(max_size=200))
def test_loads_raises_only_value_error(text: str) -> None:
    for data in (text, text.encode()):
        try:
            jsonutil.loads(data)
        except ValueError:
            pass


# ---- the REST body parser and the dead-letter tool's reading of a body ------------------------------------


def _parse_rest(schema: Any, body: bytes) -> dict[str, Any] | InvalidRequest:
    request = Request(EnvironBuilder(method="POST", data=body, content_type="application/json").get_environ())
    try:
        return cast(dict[str, Any], ApiParser().parse(schema, request, location="json"))
    except InvalidRequest as exc:
        assert exc.errors, exc.message  # the 400 names the field (or the body) at fault
        return exc


CREATE = {"accountId": "ACC-001", "symbol": "AAPL", "side": "BUY", "type": "LIMIT", "quantity": 100, "price": 189}


@FUZZ
@given(
    schema=st.sampled_from([CreateOrderRequestSchema, UpdateOrderRequestSchema]),
    body=st.binary(max_size=500)
    | json_values.map(lambda v: jsonutil.dumps(v).encode())
    | st.integers(min_value=0, max_value=3_000).map(lambda n: ("[" * n + "]" * n).encode()),
)
def test_rest_body_parsing_answers_a_value_or_a_400(schema: Any, body: bytes) -> None:
    _parse_rest(schema(), body)


@FUZZ
@given(data=st.data())
def test_rest_create_mutated_answers_a_value_or_a_400(data: st.DataObject) -> None:
    body = dict(CREATE)
    for name in data.draw(st.lists(st.sampled_from(sorted(body) + ["notes"]), max_size=3, unique=True)):
        body[name] = data.draw(json_values)
    _parse_rest(CreateOrderRequestSchema(), jsonutil.dumps(body).encode())


def test_rest_refuses_deep_nesting_with_a_clear_400() -> None:
    outcome = _parse_rest(CreateOrderRequestSchema(), b'{"notes":' * 2_000 + b"1" + b"}" * 2_000)
    assert isinstance(outcome, InvalidRequest)
    assert [(e.field, e.message) for e in outcome.errors] == [("body", "Refused: nested deeper than 32 levels.")]


@FUZZ
@given(body=st.binary(max_size=300) | st.integers(min_value=0, max_value=3_000).map(lambda n: b"[" * n))
def test_the_dead_letter_tool_shows_any_body(body: bytes) -> None:
    message = DeadLetterMessage("q", "m", None, None, None, "invalid", "d", None, None, None, None, 0, {}, body)
    shown = message.body_preview(40)
    assert message.as_dict(40)["body_bytes"] == len(body)
    if message.body_format == "bytes":
        assert shown.isprintable()  # escaped: NUL and terminal escapes show as text
