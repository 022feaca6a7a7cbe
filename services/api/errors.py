"""What can go wrong with a front-end request, independent of REST or gRPC (each maps these to its codes).

Each error carries a stable, machine-readable ``code`` that REST sends in every error body beside the
specification's ``message`` (and ``errors``): messages are for people and may be reworded, codes are for programs
and never change meaning. The table of codes is in ``services/api/README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

# Codes of errors that HTTP itself produces (no route, wrong method) or that no ApiError stands for.
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
BAD_REQUEST = "BAD_REQUEST"
INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a request (named as on the wire, camelCase)."""

    field: str
    message: str


class ApiError(Exception):
    """Base of the front end's errors; ``message`` is safe to show to the caller, ``code`` is stable."""

    code: ClassVar[str] = INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(ApiError):
    """No token, or not a valid one (REST 401, gRPC UNAUTHENTICATED)."""

    code = "UNAUTHENTICATED"


class Forbidden(ApiError):
    """A valid token that lacks the scope or the account asked for (REST 403, gRPC PERMISSION_DENIED)."""

    code = "FORBIDDEN"


class NotFound(ApiError):
    """No such order, or not one of the caller's (REST 404, gRPC NOT_FOUND)."""

    code = "NOT_FOUND"


class InvalidRequest(ApiError):
    """The request breaks a rule that is the caller's to fix (REST 400, gRPC INVALID_ARGUMENT)."""

    code = "VALIDATION_FAILED"

    def __init__(self, message: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


class MalformedJson(InvalidRequest):
    """The body is not JSON the service will read (not JSON at all, too deep, too large): REST 400.

    Its own code because the fix differs: the caller's encoder is broken, not one of its values.
    """

    code = "MALFORMED_JSON"


class Conflict(ApiError):
    """The order's state does not allow the change (REST 409, gRPC FAILED_PRECONDITION)."""

    code = "ORDER_STATE_CONFLICT"


class Unavailable(ApiError):
    """A dependency (the broker, the database) did not take the request; retrying may help (REST 503, gRPC
    UNAVAILABLE)."""

    code = "SERVICE_UNAVAILABLE"


class RateLimited(ApiError):
    """The caller (its token subject, or the account it writes to) is over its rate limit (REST 429 with
    ``Retry-After``, gRPC RESOURCE_EXHAUSTED with ``retry-after`` in the trailing metadata)."""

    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class IdempotencyConflict(Conflict):
    """An Idempotency-Key / clientOrderId used before for an order with other terms (REST 422 with ``code`` and
    ``errors`` naming the terms that differ; gRPC FAILED_PRECONDITION, as a Conflict)."""

    code = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, message: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)
