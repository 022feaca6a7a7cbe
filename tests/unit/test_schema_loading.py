"""The fast loader and marshmallow give the same answer for every body: the fast path may only say yes, and only
where marshmallow says yes with the same values (common/schema_loading.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields

from common import jsonutil
from common.messages.catalogue import KINDS, MessageKind
from common.schema_loading import Loader, load, loader_for

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_COMPILED = [k for k in KINDS if k.schema is not None and k.example is not None and loader_for(k.schema).compiled]

_TIMESTAMPS = st.sampled_from(
    [
        "2026-11-30T17:00:00Z",
        "2026-11-30T17:00:00.123456+00:00",
        "2026-11-30T18:00:00+01:00",
        "2026-11-30T17:00:00",  # naive: UTC
        "2026-11-30",
        "0001-01-01T00:00:00+01:00",  # no UTC instant in range
        "9999-12-31T23:59:59-01:00",
        "2026-13-01T00:00:00Z",
        "20261130T170000Z",
        "",
        "yesterday",
    ]
)
_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8),
    st.sampled_from(["", "a\tb", "a\nb", "a\x00b", "a\x1fb", "a\x7fb", "\ud800", "x" * 101, "FILL", "BUY", "LIMIT"]),
)
_NUMBERS = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25),
    st.integers(0, 10).flatmap(lambda p: st.decimals(allow_nan=False, allow_infinity=False, places=p)),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal("0"), Decimal("-0.0"), Decimal("1E+30"), Decimal("1.000000000"), Decimal("0.123456789")]),
)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    _NUMBERS,
    _TEXT,
    _TIMESTAMPS,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same type, and for decimals and instants equal in form too (exponent, offset)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Decimal):
        return bool(a.as_tuple() == b.as_tuple() or (a.is_nan() and b.is_nan()))
    if isinstance(a, datetime):
        return bool(a == b and a.utcoffset() == b.utcoffset() and a.isoformat() == b.isoformat())
    if isinstance(a, dict):
        return bool(a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a))
    return bool(a == b)


def _answer(schema: Schema, body: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    try:
        return schema.load(body), None
    except ValidationError as exc:
        return None, exc.messages


@st.composite
def _bodies(draw: st.DrawFn) -> tuple[MessageKind, dict[str, Any]]:
    kind = draw(st.sampled_from(_COMPILED))
    assert kind.schema is not None and kind.example is not None
    body: dict[str, Any] = jsonutil.loads(kind.example)
    keys = [f.data_key or name for name, f in kind.schema.load_fields.items()]
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True)):
        value = draw(st.one_of(st.just(_MISSING), _VALUES))
        if value is _MISSING:
            body.pop(key, None)
        else:
            body[key] = value
    if draw(st.booleans()):
        body[draw(st.text(max_size=6))] = draw(_VALUES)  # an unknown key, or a known one under its snake name
    return kind, body


@FUZZ
@given(_bodies())
def test_the_fast_path_only_says_yes_where_marshmallow_does(case: tuple[MessageKind, dict[str, Any]]) -> None:
    kind, body = case
    assert kind.schema is not None
    expected, errors = _answer(kind.schema, body)
    fast = loader_for(kind.schema).fast(body)
    if fast is not None:
        assert expected is not None, f"fast path accepted what marshmallow refuses: {errors}"
        assert _same(fast, expected)
    try:
        got: dict[str, Any] | None = load(kind.schema, body)
        got_errors = None
    except ValidationError as exc:
        got, got_errors = None, exc.messages
    assert got_errors == errors
    assert expected is None or (got is not None and _same(got, expected))


# One field changed at a time to each of these: values a sender gets nearly right, and the edges of each check.
_TRICKY: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    1,
    -1,
    2**31,
    10**12,
    10**30,
    Decimal("0"),
    Decimal("-0"),
    Decimal("0.00000001"),
    Decimal("0.000000001"),
    Decimal("1.50000000000"),
    Decimal("123456789012.5"),
    Decimal("1234567890123.5"),
    Decimal("1E+2"),
    Decimal("-5"),
    Decimal("NaN"),
    Decimal("Infinity"),
    "",
    "1.5",
    "5",
    "true",
    "x" * 20,
    "x" * 21,
    "x" * 36,
    "x" * 37,
    "x" * 101,
    "a\x00b",
    "a\x01b",
    "a\tb",
    "a\nb",
    "a\rb",
    "a\x0bb",
    "a\x7fb",
    "a\ud800b",
    "caf\u00e9 \u2603",
    "BUY",
    "SELL",
    "FILL",
    "TRADE_CANCEL",
    "LIMIT",
    "DAY",
    "2026-11-30T17:00:00Z",
    "2026-11-30T18:00:00+01:00",
    "2026-11-30T17:00:00",
    "2026-11-30",
    "0001-01-01T00:00:00+01:00",
    "2026-13-01T00:00:00Z",
    [],
    {},
    _MISSING,
)


@pytest.mark.parametrize("kind", _COMPILED, ids=lambda k: k.type)
def test_every_field_changed_alone_gets_the_same_answer(kind: MessageKind) -> None:
    assert kind.schema is not None and kind.example is not None
    base: dict[str, Any] = jsonutil.loads(kind.example)
    loader = loader_for(kind.schema)
    fast_yes = 0
    for name, field in kind.schema.load_fields.items():
        key = field.data_key or name
        for value in _TRICKY:
            body = dict(base)
            if value is _MISSING:
                body.pop(key, None)
            else:
                body[key] = value
            expected, errors = _answer(kind.schema, body)
            fast = loader.fast(body)
            if fast is not None:
                fast_yes += 1
                assert expected is not None, f"{key}={value!r}: fast path accepted what marshmallow refuses: {errors}"
                assert _same(fast, expected), f"{key}={value!r}"
    assert fast_yes > 0


@pytest.mark.parametrize("kind", _COMPILED, ids=lambda k: k.type)
def test_each_example_takes_the_fast_path(kind: MessageKind) -> None:
    # Were the fast path to doubt every valid body, the test above would pass and the speed would be gone.
    assert kind.schema is not None and kind.example is not None
    body = jsonutil.loads(kind.example)
    fast = loader_for(kind.schema).fast(body)
    assert fast is not None and _same(fast, kind.schema.load(body))


def test_the_stage_schemas_are_compiled() -> None:
    stage_kinds = [k for k in KINDS if k.stage is not None and k.schema is not None and k.retired is None]
    assert stage_kinds
    assert [k.type for k in stage_kinds if not loader_for(k.schema).compiled] == []  # type: ignore[arg-type]


def test_a_schema_with_a_field_kind_it_does_not_know_goes_to_marshmallow() -> None:
    class WithList(Schema):
        items = fields.List(fields.Integer(), required=True)

    loader = Loader(WithList())
    assert not loader.compiled
    assert loader.load({"items": [1, 2]}) == {"items": [1, 2]}
    with pytest.raises(ValidationError):
        loader.load({"items": "no"})
