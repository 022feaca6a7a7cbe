"""The webargs parser of every REST endpoint: exact decimals from JSON bodies, and the specification's 400 shape."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from marshmallow import Schema, ValidationError
from webargs import core as webargs_core
from webargs.flaskparser import FlaskParser, is_json_request

from common import jsonutil
from services.api.errors import FieldError, InvalidRequest, MalformedJson

_LOCATIONS = frozenset({"json", "query", "querystring", "headers", "path", "view_args"})


def _flatten(messages: Any, prefix: str = "") -> list[FieldError]:
    """marshmallow's nested messages as a flat list of (field path, message)."""
    if isinstance(messages, Mapping):
        errors: list[FieldError] = []
        for key, value in messages.items():
            name = "body" if key == "_schema" else str(key)
            errors.extend(_flatten(value, f"{prefix}.{name}" if prefix and name != "body" else prefix or name))
        return errors
    if isinstance(messages, list | tuple):
        errors = []
        for item in messages:
            errors.extend(_flatten(item, prefix) if not isinstance(item, str) else [FieldError(prefix, item)])
        return errors
    return [FieldError(prefix, str(messages))]


class ApiParser(FlaskParser):
    """webargs parser: exact decimals from JSON bodies, and the specification's 400 error shape."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req):
            return webargs_core.missing
        data = req.get_data(cache=True)
        try:
            return jsonutil.loads(data, max_bytes=jsonutil.MAX_BODY_BYTES)
        except jsonutil.JSONLimitError as exc:  # too deep or too large: say which, not just "malformed"
            raise MalformedJson("Malformed JSON body", [FieldError("body", f"Refused: {exc}.")]) from exc
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
            # webargs expects the standard library's error type for its invalid-JSON hook.
            raise json.JSONDecodeError(str(exc), doc=" ", pos=0) from exc
        except Exception as exc:  # the limits make this unreachable; a client's bytes must never be a 500
            raise MalformedJson("Malformed JSON body", [FieldError("body", "Invalid JSON.")]) from exc

    def _handle_invalid_json_error(self, error: Any, req: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise MalformedJson("Malformed JSON body", [FieldError("body", "Invalid JSON.")])

    def handle_error(
        self,
        error: ValidationError,
        req: Any,
        schema: Schema,
        *,
        error_status_code: int | None,
        error_headers: Mapping[str, str] | None,
    ) -> NoReturn:
        messages: Any = error.messages
        # webargs wraps messages by location ({"json": {...}}); callers care about the field only.
        if isinstance(messages, Mapping) and all(
            key in _LOCATIONS and isinstance(value, Mapping) for key, value in messages.items()
        ):
            messages = {field: text for by_field in messages.values() for field, text in by_field.items()}
        raise InvalidRequest("Invalid request", _flatten(messages))
