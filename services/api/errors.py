"""What can go wrong with a front-end request, independent of REST or gRPC (each maps these to its codes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a request (named as on the wire, camelCase)."""

    field: str
    message: str


class ApiError(Exception):
    """Base of the front end's errors; ``message`` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(ApiError):
    """No token, or not a valid one (REST 401, gRPC UNAUTHENTICATED)."""


class Forbidden(ApiError):
    """A valid token that lacks the scope or the account asked for (REST 403, gRPC PERMISSION_DENIED)."""


class NotFound(ApiError):
    """No such order, or not one of the caller's (REST 404, gRPC NOT_FOUND)."""


class InvalidRequest(ApiError):
    """The request breaks a rule that is the caller's to fix (REST 400, gRPC INVALID_ARGUMENT)."""

    def __init__(self, message: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


class Conflict(ApiError):
    """The order's state does not allow the change (REST 409, gRPC FAILED_PRECONDITION)."""


class Unavailable(ApiError):
    """A dependency (the broker) did not take the request; retrying may help (REST 503, gRPC UNAVAILABLE)."""


class IdempotencyConflict(Conflict):
    """An Idempotency-Key / clientOrderId used before for an order with other terms (REST 422 with ``code`` and
    ``errors`` naming the terms that differ; gRPC FAILED_PRECONDITION, as a Conflict)."""

    code = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, message: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)
