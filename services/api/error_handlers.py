"""REST error bodies: the specification's ``{message}`` / ``{message, errors}`` with the stable ``code`` added.

:func:`install_error_handlers` answers the front end's :class:`~services.api.errors.ApiError`;
:func:`http_exception_response` answers what werkzeug raises (no route, wrong method, a crash), for
``OmsApi`` (``services.api.openapi``), which flask-smorest hands those to.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from services.api.errors import (
    BAD_REQUEST,
    INTERNAL,
    METHOD_NOT_ALLOWED,
    ApiError,
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

_STATUS_TEXT = {
    400: "Invalid request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    429: "Too many requests",
    503: "Service unavailable",
}
# The code of an error werkzeug raises (no route, wrong method, a crash); other 4xx: BAD_REQUEST, 5xx: INTERNAL.
_HTTP_ERROR_CODES = {
    401: Unauthenticated.code,
    403: Forbidden.code,
    404: NotFound.code,
    405: METHOD_NOT_ALLOWED,
    409: Conflict.code,
    429: RateLimited.code,
    503: Unavailable.code,
}
_API_ERROR_STATUS: dict[type[ApiError], int] = {
    IdempotencyConflict: 422,  # before Conflict, its base: the first match wins
    InvalidRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    Unavailable: 503,
}


def http_exception_response(error: HTTPException) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The body, status and headers answering an HTTP error werkzeug raised."""
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    status = error.code or 500
    message = _STATUS_TEXT.get(status) or error.name or "Error"
    code = _HTTP_ERROR_CODES.get(status) or (INTERNAL if status >= 500 else BAD_REQUEST)
    return {"message": message, "code": code}, status, headers


def install_error_handlers(app: Flask) -> None:
    """Answer every ApiError with its status, its body and its header: for 401 the ``WWW-Authenticate``
    challenge, for 429 ``Retry-After`` (seconds)."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> tuple[dict[str, Any], int, dict[str, str]]:
        status = next(code for kind, code in _API_ERROR_STATUS.items() if isinstance(error, kind))
        body: dict[str, Any] = {"message": error.message, "code": error.code}
        headers: dict[str, str] = {}
        if isinstance(error, InvalidRequest | IdempotencyConflict):
            body["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
        if isinstance(error, Unauthenticated):
            headers["WWW-Authenticate"] = 'Bearer realm="oms"'
        if isinstance(error, RateLimited):
            headers["Retry-After"] = str(error.retry_after_seconds)
        return body, status, headers
