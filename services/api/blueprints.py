"""What every REST blueprint builds on: the app's shared objects, bearer authentication and the blueprint class.

``create_app`` (``services.api.app``) fills ``current_app.extensions[EXTENSION]`` with the token service
(``tokens``), the order service (``service``), the readiness probe (``readiness``) and the rate limits
(``limits``); the route modules read
them through :func:`extension`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from flask import current_app, request
from flask_smorest import Blueprint

from services.api.auth import AuthenticationError, Principal, TokenService
from services.api.errors import Unauthenticated
from services.api.rate_limit import FrontEndLimits
from services.api.request_parser import ApiParser

EXTENSION = "oms"


_Decorated = TypeVar("_Decorated", bound=Callable[..., Any])


class Decorator(Protocol):
    """A decorator that returns what it decorates, with its type (a view class, a method, a hook)."""

    def __call__(self, decorated: _Decorated, /) -> _Decorated: ...


# flask-smorest ships no type information (no py.typed, no stubs), so its Blueprint is Any to mypy and every
# decorator it makes would erase the type of what it decorates. The overrides below only restate, with types,
# the decorators the route modules use; each hands over to flask-smorest unchanged.
class ApiBlueprint(Blueprint):  # type: ignore[misc]  # subclassing Any: see above
    """flask-smorest blueprint that parses with :class:`ApiParser`, with typed decorators."""

    ARGUMENTS_PARSER = ApiParser()

    def route(self, rule: str, **options: Any) -> Decorator:
        """Register a MethodView class (or view function) at ``rule`` and in the OpenAPI document."""
        decorator: Decorator = super().route(rule, **options)
        return decorator

    @staticmethod
    def doc(**kwargs: Any) -> Decorator:
        """Add ``kwargs`` verbatim to the operation's OpenAPI entry."""
        decorator: Decorator = Blueprint.doc(**kwargs)
        return decorator

    def arguments(self, schema: Any, **kwargs: Any) -> Decorator:
        """Parse the request (``location``: json, query, headers...) with ``schema``; pass the result in."""
        decorator: Decorator = super().arguments(schema, **kwargs)
        return decorator

    def response(self, status_code: int, schema: Any = None, **kwargs: Any) -> Decorator:
        """Serialise the view's return value with ``schema``, answered with ``status_code``."""
        decorator: Decorator = super().response(status_code, schema, **kwargs)
        return decorator

    def alt_response(self, status_code: int, response: Any = None, **kwargs: Any) -> Decorator:
        """Document another response of the operation (no effect on what the view returns)."""
        decorator: Decorator = super().alt_response(status_code, response, **kwargs)
        return decorator

    def before_request(self, hook: _Decorated) -> _Decorated:
        """Run ``hook`` before every request to this blueprint (flask's hook, typed)."""
        registered: _Decorated = super().before_request(hook)
        return registered


def extension() -> dict[str, Any]:
    """The objects ``create_app`` shares with the endpoints of the current app."""
    ext: dict[str, Any] = current_app.extensions[EXTENSION]
    return ext


def bearer_principal(*, read: bool = True) -> Principal:
    """The caller of the current request, from its bearer token; Unauthenticated (401) when it has no valid one.

    With ``read`` (the default) the request counts against the subject's rate limit (RateLimited, 429, when it
    is over); an order write passes ``read=False``: the order service counts it against the order's account.
    """
    ext = extension()
    tokens: TokenService = ext["tokens"]
    try:
        principal = tokens.verify_header(request.headers.get("Authorization"))
    except AuthenticationError as exc:
        raise Unauthenticated(str(exc)) from exc
    if read:
        limits: FrontEndLimits = ext["limits"]
        limits.read(principal.subject)
    return principal
