"""Loading a message body with a marshmallow schema, quickly when the body is plainly valid.

marshmallow stays the one definition of every message's shape and the author of every error message, which
serve the people reading a dead letter. But its ``Schema.load`` costs about 70 µs for an execution report, a
seventh of a stage's CPU per message (docs/design.md, Speed), most of it in per-field machinery rather than in
checks. ``load`` runs the same checks compiled from the schema's own fields (the same validators, the same text
and decimal rules, the same ISO parser, the same schema validators) and falls back to ``Schema.load`` at the first
doubt: a type the fast path does not take, a check that fails, a field kind it does not know. So the fast path
may only say yes; every no, and every error message, is marshmallow's. tests/unit/test_schema_loading.py holds
the two to the same answers on generated bodies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES, VALIDATES_SCHEMA

from common.contracts import MAX_DECIMAL_PLACES, _Amount, _Text, _Timestamp, decimal_problem

# What ``text_problem`` refuses, as one regular expression: NUL and the other control characters, DEL and lone
# surrogates; free text may carry tab, line feed and carriage return.
_NOT_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_NOT_FREE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class _Doubt(Exception):
    """The fast path cannot vouch for a value: marshmallow decides."""


Check = Callable[[Any], Any]


def _validated(field: fields.Field[Any], convert: Check) -> Check:
    """``convert``, then the field's validators (Length, OneOf, Range...), each as marshmallow calls it."""
    validators = tuple(field.validators)
    if not validators:
        return convert

    def check(value: Any) -> Any:
        result = convert(value)
        try:
            for validator in validators:
                if validator(result) is False:
                    raise _Doubt
        except ValidationError:
            raise _Doubt from None
        return result

    return check


def _text(field: _Text) -> Check:
    pattern = _NOT_FREE_TEXT if field.free_text else _NOT_TEXT

    def convert(value: Any) -> str:
        if type(value) is not str or pattern.search(value) is not None:
            raise _Doubt
        return value

    return convert


def _string(value: Any) -> str:
    if type(value) is not str:
        raise _Doubt
    return value


def _amount(field: _Amount) -> Check:
    if field.places is not None or field.as_string:
        raise _Doubt  # a quantising or string-dumping Decimal field: not one of ours, leave it to marshmallow
    most_digits = field.max_integer_digits

    def convert(value: Any) -> Decimal:
        kind = type(value)
        if kind is Decimal:
            number: Decimal = value
        elif kind is int:
            number = Decimal(value)
        else:
            raise _Doubt  # marshmallow also takes numeric strings; rare, so its answer is worth waiting for
        if decimal_problem(number, max_integer_digits=most_digits, max_places=MAX_DECIMAL_PLACES) is not None:
            raise _Doubt
        return number

    return convert


def _integer(field: fields.Integer) -> Check:
    def convert(value: Any) -> int:
        if type(value) is not int:  # not bool, not 1.0, not "1": marshmallow's answer for those
            raise _Doubt
        return value

    return convert


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _Doubt
    return value


def _timestamp(field: _Timestamp) -> Check:
    zone = field.default_timezone

    def convert(value: Any) -> datetime:
        if type(value) is not str:
            raise _Doubt
        try:
            moment = datetime.fromisoformat(value)  # marshmallow's own parser for the "iso" format
            if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
                moment = moment.replace(tzinfo=zone)
            moment.astimezone(UTC)
        except (ValueError, OverflowError):
            raise _Doubt from None
        return moment

    return convert


def _check_for(field: fields.Field[Any]) -> Check:
    kind = type(field)
    convert: Check
    if kind is _Text:
        assert isinstance(field, _Text)
        convert = _text(field)
    elif kind is fields.String:
        convert = _string
    elif kind is _Amount:
        assert isinstance(field, _Amount)
        convert = _amount(field)
    elif kind is fields.Integer:
        assert isinstance(field, fields.Integer)
        convert = _integer(field)
    elif kind is fields.Boolean:
        convert = _boolean
    elif kind is _Timestamp:
        assert isinstance(field, _Timestamp)
        if field.format not in (None, "iso", "iso8601"):
            raise _Doubt
        convert = _timestamp(field)
    else:
        raise _Doubt  # a kind not compiled: the schema is always loaded by marshmallow
    return _validated(field, convert)


_Plan = tuple[tuple[str, str, bool, bool, Check], ...]


class Loader:
    """``load(body)``: what ``schema.load(body)`` returns, or raises, for a JSON object's dict."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._plan: _Plan | None = None
        self._schema_checks: tuple[Callable[..., Any], ...] = ()
        try:
            self._plan, self._schema_checks = self._compile(schema)
        except _Doubt:
            self._plan = None

    @staticmethod
    def _compile(schema: Schema) -> tuple[_Plan, tuple[Callable[..., Any], ...]]:
        hooks = schema._hooks
        if hooks[PRE_LOAD] or hooks[POST_LOAD] or hooks[VALIDATES] or schema.many or schema.partial:
            raise _Doubt
        if schema.unknown != EXCLUDE:
            raise _Doubt  # unknown keys refused or kept: only EXCLUDE ignores them as the fast path does
        schema_checks = []
        for name, many, options in hooks[VALIDATES_SCHEMA]:
            if many or options.get("pass_original"):
                raise _Doubt
            schema_checks.append(getattr(schema, name))
        plan = []
        for name, field in schema.load_fields.items():
            if field.load_default is not missing:
                raise _Doubt
            key = field.data_key or name
            plan.append((name, key, field.required, field.allow_none, _check_for(field)))
        return tuple(plan), tuple(schema_checks)

    @property
    def compiled(self) -> bool:
        """Whether the fast path serves this schema (else every body goes to marshmallow)."""
        return self._plan is not None

    def fast(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The loaded body if the fast path vouches for it, else None (then only marshmallow can say)."""
        if self._plan is None:
            return None
        loaded: dict[str, Any] = {}
        try:
            for name, key, required, allow_none, check in self._plan:
                value = body.get(key, missing)
                if value is missing:
                    if required:
                        return None
                    continue
                if value is None:
                    if not allow_none:
                        return None
                    loaded[name] = None
                    continue
                loaded[name] = check(value)
            for schema_check in self._schema_checks:
                schema_check(loaded)
        except (_Doubt, ValidationError):
            return None
        return loaded

    def load(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The loaded body; raises marshmallow's ``ValidationError`` with its messages when it is not valid."""
        loaded = self.fast(body)
        if loaded is not None:
            return loaded
        result: dict[str, Any] = self.schema.load(body)
        return result


_LOADERS: dict[int, tuple[Schema, Loader]] = {}


def loader_for(schema: Schema) -> Loader:
    """The schema's loader, compiled at first use (schemas are module-level instances: a handful)."""
    entry = _LOADERS.get(id(schema))
    if entry is None or entry[0] is not schema:
        entry = (schema, Loader(schema))
        _LOADERS[id(schema)] = entry
    return entry[1]


def load(schema: Schema, body: Mapping[str, Any]) -> dict[str, Any]:
    """``schema.load(body)``, by the fast path where it vouches for the body."""
    return loader_for(schema).load(body)
