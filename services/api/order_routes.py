"""The REST order endpoints: create, list, read, cancel and modify (``/orders``, ``/orders/{orderId}``)."""

from __future__ import annotations

from typing import Any

from flask import g, request
from flask.views import MethodView

from services.api.blueprints import ApiBlueprint, bearer_principal, extension
from services.api.errors import FieldError, InvalidRequest
from services.api.order_service import OrderService, order_request_of
from services.api.queries import OrderFilter
from services.api.schemas import (
    CreateOrderRequestSchema,
    IdempotencyHeaderSchema,
    MessageSchema,
    OrderListArgsSchema,
    OrderPageSchema,
    OrderResponseSchema,
    UpdateOrderRequestSchema,
    ValidationErrorsSchema,
)

blp = ApiBlueprint("Orders", __name__, description="Orders: create, list, read, cancel and modify", url_prefix="")

CREATE_EXAMPLE = {
    "accountId": "ACC-001",
    "symbol": "AAPL",
    "side": "BUY",
    "type": "LIMIT",
    "quantity": 100,
    "price": 189.5,
    "timeInForce": "DAY",
    "strategyId": "momentum-1",
}
_RATE_LIMITED_DOC: dict[str, Any] = {
    "schema": MessageSchema,
    "description": "Over the rate limit (reads: the token's subject; writes: the order's account); code "
    "RATE_LIMITED, header Retry-After (seconds)",
}
_FORBIDDEN_DOC: dict[str, Any] = {
    "schema": MessageSchema,
    "description": "The token lacks the scope, or does not grant the account named",
}


def _service() -> OrderService:
    service: OrderService = g.oms_service
    return service


@blp.before_request
def _authenticate() -> None:
    """Every orders endpoint needs a valid bearer token, checked before the request body is read.

    Reads count against the token's rate limit here; writes (POST, PUT) against the order's account, in the
    order service, once the account is known.
    """
    g.principal = bearer_principal(read=request.method not in ("POST", "PUT"))
    g.oms_service = extension()["service"]


@blp.route("/orders")
class OrdersResource(MethodView):
    """The order collection."""

    @blp.doc(operationId="createOrder", summary="Create a new order")
    @blp.arguments(IdempotencyHeaderSchema, location="headers")
    @blp.arguments(CreateOrderRequestSchema, location="json", example=CREATE_EXAMPLE)
    @blp.response(201, OrderResponseSchema, description="Order created successfully")
    @blp.alt_response(
        200,
        schema=OrderResponseSchema,
        description="The same Idempotency-Key (or clientOrderId) was seen before: the order it created",
        success=True,
    )
    @blp.alt_response(400, response="BadRequest")
    @blp.alt_response(401, response="Unauthorized")
    @blp.alt_response(403, **_FORBIDDEN_DOC)
    @blp.alt_response(429, **_RATE_LIMITED_DOC)
    @blp.alt_response(
        422,
        schema=ValidationErrorsSchema,
        description="The Idempotency-Key (or clientOrderId) was used before with other terms: errors name them; "
        "code is IDEMPOTENCY_KEY_REUSED",
    )
    def post(self, headers: dict[str, Any], body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Create a new order.

        Accepted orders are booked PENDING (201) and pass the risk gate asynchronously; an order for a
        halted instrument or an inactive account is booked REJECTED with its rejectionReason (201). A request
        that breaks a rule the caller must fix (price per type, tick, lot, quantity, unknown instrument or
        account) is answered 400 and nothing is booked.
        """
        key, client_order_id = headers.get("idempotency_key"), body.get("client_order_id")
        if key is not None and client_order_id is not None and key != client_order_id:
            raise InvalidRequest(
                "Invalid request",
                [FieldError("clientOrderId", "must equal the Idempotency-Key header when both are given")],
            )
        order_request = order_request_of(body, key or client_order_id)
        order, created = _service().create(g.principal, order_request)
        return order, 201 if created else 200

    @blp.doc(operationId="listOrders", summary="List orders with filtering")
    @blp.arguments(OrderListArgsSchema, location="query")
    @blp.response(200, OrderPageSchema, description="List of orders")
    @blp.alt_response(400, response="BadRequest")
    @blp.alt_response(401, response="Unauthorized")
    @blp.alt_response(403, **_FORBIDDEN_DOC)
    @blp.alt_response(429, **_RATE_LIMITED_DOC)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List orders with filtering, newest first.

        Only the caller's accounts are listed; naming another account in accountId is 403. fromDate is
        inclusive, toDate exclusive; a page past the end is empty.
        """
        where = OrderFilter(
            status=args.get("status"),
            account_id=args.get("account_id"),
            symbol=args.get("symbol"),
            from_date=args.get("from_date"),
            to_date=args.get("to_date"),
        )
        page = _service().list(g.principal, where, args["page"], args["size"])
        return {
            "content": page.content,
            "page": page.page,
            "size": page.size,
            "total_elements": page.total_elements,
            "total_pages": page.total_pages,
        }


@blp.route("/orders/<orderId>")
class OrderResource(MethodView):
    """One order."""

    @blp.doc(operationId="getOrder", summary="Get order by ID")
    @blp.response(200, OrderResponseSchema, description="Order details")
    @blp.alt_response(404, schema=MessageSchema, description="Order not found")
    @blp.alt_response(401, response="Unauthorized")
    @blp.alt_response(403, **_FORBIDDEN_DOC)
    @blp.alt_response(429, **_RATE_LIMITED_DOC)
    def get(self, orderId: str) -> dict[str, Any]:
        """Get order by ID, with its execution reports (404 also for another account's order)."""
        return _service().get(g.principal, orderId)

    @blp.doc(operationId="updateOrder", summary="Update order (cancel, modify)")
    @blp.arguments(UpdateOrderRequestSchema, location="json")
    @blp.response(200, OrderResponseSchema, description="Order updated successfully")
    @blp.alt_response(400, response="BadRequest")
    @blp.alt_response(404, schema=MessageSchema, description="Order not found")
    @blp.alt_response(401, response="Unauthorized")
    @blp.alt_response(403, **_FORBIDDEN_DOC)
    @blp.alt_response(429, **_RATE_LIMITED_DOC)
    @blp.alt_response(
        409, schema=MessageSchema, description="The order's state does not allow the change (e.g. it is filled)"
    )
    def put(self, body: dict[str, Any], orderId: str) -> dict[str, Any]:
        """Update order (cancel, modify).

        CANCEL: an order not yet at the venue is canceled at once; one at the venue is asked to cancel and
        shows status OPEN/PARTIALLY_FILLED with state PENDING_CANCEL until the venue answers. MODIFY: values
        left out keep the current ones; at the venue the new terms apply once the venue confirms.
        """
        if body["action"] == "CANCEL":
            return _service().cancel(g.principal, orderId, body.get("notes"))
        return _service().modify(
            g.principal,
            orderId,
            quantity=body.get("quantity"),
            price=body.get("price"),
            stop_price=body.get("stop_price"),
            notes=body.get("notes"),
        )
