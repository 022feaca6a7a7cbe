"""The REST app's OpenAPI document (``/openapi.json``, browsable at ``/docs``) and the flask-smorest Api serving it.

The document is a superset of the specification's ``proto/openapi.yaml``: the same paths, operation ids, schemas
and response components, plus what this service adds (the Idempotency-Key header, 403/409 responses, finer order
detail, health endpoints).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from apispec import BasePlugin
from flask import Flask, Response, send_from_directory
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from services.api.error_handlers import http_exception_response
from services.api.schemas import MessageSchema, ValidationErrorsSchema

# Swagger UI's JS and CSS come from the pinned flask-swagger-ui package (swagger-ui-dist 5.x) and are served by
# this app: a trading network has no internet, and /docs must work there. Only its files are used, not its
# blueprint: flask-smorest renders the page.
SWAGGER_UI_URL = "/docs/assets/"
SWAGGER_UI_DIST = Path(str(files("flask_swagger_ui") / "dist"))


# flask-smorest ships no type information (no py.typed, no stubs): to mypy its Api is Any.
class OmsApi(Api):  # type: ignore[misc]  # subclassing Any: see above
    """flask-smorest Api with the specification's error bodies ({message} / {message, errors}) and a ``code``."""

    DEFAULT_ERROR_RESPONSE_NAME = None
    ERROR_SCHEMA = MessageSchema

    def handle_http_exception(self, error: HTTPException) -> tuple[dict[str, Any], int, dict[str, str]]:
        return http_exception_response(error)


class SpecResponsesPlugin(BasePlugin):
    """Points 400 and 401 at the specification's response components (BadRequest, Unauthorized)."""

    _REFS = {"400": "BadRequest", "401": "Unauthorized"}

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        for operation in (operations or {}).values():
            responses = operation.get("responses", {})
            for code in list(responses):
                if str(code) in self._REFS:
                    responses[code] = self._REFS[str(code)]


def _register_components(api: Api) -> None:
    spec = api.spec
    assert spec is not None
    spec.components.response(
        "BadRequest",
        {"description": "Invalid request", "content": {"application/json": {"schema": ValidationErrorsSchema}}},
    )
    spec.components.response(
        "Unauthorized",
        {
            "description": "Authentication required",
            "content": {"application/json": {"schema": MessageSchema}},
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
        },
    )
    spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A token from `./oms token` (claims: sub, accounts, scopes, exp, iss).",
        },
    )


def create_api(app: Flask) -> Api:
    """The Api that documents ``app``, with the specification's shared components; register blueprints on it."""
    app.config.update(
        API_TITLE="Order Management Service API",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_UI_URL,
        # No online validator badge: it would call validator.swagger.io, and the page must need only this host.
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
        API_SPEC_OPTIONS={
            "info": {"description": "API for managing the complete lifecycle of orders"},
            "security": [{"bearerAuth": []}],
        },
    )
    api = OmsApi(app, spec_kwargs={"extra_plugins": [SpecResponsesPlugin()]})
    _register_components(api)
    return api


def _swagger_ui_asset(filename: str) -> Response:
    # send_from_directory refuses paths that leave the directory; the files change only with the pinned package.
    return send_from_directory(SWAGGER_UI_DIST, filename, max_age=3600)


def install_swagger_ui_assets(app: Flask) -> None:
    """Serve Swagger UI's files under :data:`SWAGGER_UI_URL`, so ``/docs`` needs nothing but this host."""
    app.add_url_rule(f"{SWAGGER_UI_URL}<path:filename>", "swagger_ui_assets", _swagger_ui_asset)
