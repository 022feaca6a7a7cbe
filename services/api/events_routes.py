"""``GET /orders/{orderId}/events``: an order's audit trail (``order_events``) in sequence.

The same rules as ``GET /orders/{orderId}``: a bearer token with ``orders:read``, and another account's order
is reported as missing (404). Paging is optional and by sequence: ``afterSequence`` (default 0, the start) and
``limit`` (default and maximum 1000); a full page means there may be more after its last ``sequence``.
Register with ``register(app, api, engine)``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g
from flask.views import MethodView
from flask_smorest import Api
from marshmallow import fields, post_dump, validate
from sqlalchemy import Engine

from services.api.auth import Principal
from services.api.blueprints import ApiBlueprint, bearer_principal, extension
from services.api.order_events import MAX_EVENTS, visible_order_events
from services.api.order_service import OrderService
from services.api.schemas import ApiSchema, MessageSchema

ENGINE_KEY = "oms.events.engine"

blp = ApiBlueprint("Order events", __name__, description="An order's audit trail, in sequence", url_prefix="/orders")


class OrderEventsArgsSchema(ApiSchema):
    """Optional paging of an order's events."""

    after_sequence = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=2**31 - 1),
        metadata={"description": "Only events with a sequence above this one (0: from the start)"},
    )
    limit = fields.Integer(
        load_default=MAX_EVENTS,
        validate=validate.Range(min=1, max=MAX_EVENTS),
        metadata={"description": f"At most this many events, 1 to {MAX_EVENTS}"},
    )


class OrderEventSchema(ApiSchema):
    """One change of the order, as recorded in its audit trail."""

    type = fields.String(metadata={"description": "What happened (ORDER_CREATED, RISK_APPROVED, ORDER_FILLED...)"})
    sequence = fields.Integer(metadata={"description": "Position in the order's story, from 1, without gaps"})
    timestamp = fields.DateTime(metadata={"description": "When it was recorded"})
    user_id = fields.String(metadata={"description": "Who caused it (a token's subject, a stage), if known"})
    correlation_id = fields.String(metadata={"description": "The correlation id of the message or request"})
    message_id = fields.String(metadata={"description": "The message that caused it, if one did"})
    payload = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        metadata={"description": "The event's details (figures as exact JSON numbers)"},
    )

    @post_dump
    def _drop_none(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # Absent rather than null, as in every other response (the specification's schemas allow no null).
        return {key: value for key, value in data.items() if value is not None}


class OrderEventsSchema(ApiSchema):
    """An order's events in sequence."""

    order_id = fields.String(metadata={"description": "Order ID"})
    events = fields.List(fields.Nested(OrderEventSchema))


@blp.before_request
def _authenticate() -> None:
    """A valid bearer token, checked before anything else (scope and account are checked per order)."""
    g.principal = bearer_principal()


@blp.route("/<orderId>/events")
class OrderEventsResource(MethodView):
    """One order's audit trail."""

    @blp.doc(operationId="getOrderEvents", summary="Get an order's events in sequence")
    @blp.arguments(OrderEventsArgsSchema, location="query")
    @blp.response(200, OrderEventsSchema, description="The order's events, oldest first")
    @blp.alt_response(400, response="BadRequest")
    @blp.alt_response(401, response="Unauthorized")
    @blp.alt_response(403, schema=MessageSchema, description="The token lacks the scope orders:read")
    @blp.alt_response(404, schema=MessageSchema, description="Order not found")
    def get(self, args: dict[str, Any], orderId: str) -> dict[str, Any]:
        """An order's events in sequence (404 also for another account's order)."""
        service: OrderService = extension()["service"]
        engine: Engine = current_app.extensions[ENGINE_KEY]
        principal: Principal = g.principal
        events = visible_order_events(
            service, engine, principal, orderId, after_sequence=args["after_sequence"], limit=args["limit"]
        )
        return {"order_id": orderId, "events": events}


def register(app: Flask, api: Api, engine: Engine) -> None:
    """Serve the blueprint through ``api`` (documented in ``/openapi.json``), with ``engine``."""
    app.extensions[ENGINE_KEY] = engine
    api.register_blueprint(blp)
