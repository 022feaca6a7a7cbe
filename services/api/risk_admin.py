"""Operations endpoints of the risk gate: limits, the kill switch and restricted symbols (scope ``operations``).

    GET/PUT    /risk/limits                 the global limits (the defaults every account inherits)
    GET/PUT    /risk/limits/{accountId}     an account's limits (null: inherit the global value)
    GET/POST   /risk/halts                  halts in force / halt new orders of an account or of everyone
    DELETE     /risk/halts?accountId=...    lift a halt (no accountId: the global one)
    GET/POST   /risk/restricted-symbols     restricted symbols / restrict one (no accountId: for everyone)
    DELETE     /risk/restricted-symbols?symbol=...&accountId=...

Every change is audited with the token's subject as its author (``services.risk_gate.admin``) and applies to
the risk gate's next batch: no restart. Register with ``register(app, api, engine)``.

The ``operations`` scope acts only on the token's accounts: an account's limits, halt or restrictions need the
account in the token; the global ones (limits every account inherits, the global halt, restrictions for
everyone) need a token for every account (``accounts: ["*"]``). Lists show only what the token may act on.
Anything else is 403.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g
from flask.views import MethodView
from flask_smorest import Api
from marshmallow import fields
from sqlalchemy import Engine

from common.risk import admin
from common.risk.controls import Halt, Restriction
from common.risk.limits import LIMIT_SPECS, InvalidLimit
from services.api.auth import SCOPE_OPERATIONS, Principal
from services.api.blueprints import ApiBlueprint, bearer_principal
from services.api.errors import FieldError, Forbidden, InvalidRequest, NotFound
from services.api.schemas import ApiSchema, Identifier, MessageSchema, Number, Text, UtcDateTime

ENGINE_KEY = "oms.risk_admin.engine"

blp = ApiBlueprint(
    "Risk", __name__, description="Risk limits, kill switch and restricted symbols (operations)", url_prefix="/risk"
)


def _limit_field(kind: type) -> fields.Field[Any]:
    if kind is bool:
        return fields.Boolean(allow_none=True)
    if kind is int:
        return fields.Integer(allow_none=True, strict=True)
    return Number(allow_none=True)


RiskLimitsSchema: type[ApiSchema] = ApiSchema.from_dict(  # type: ignore[assignment]
    {spec.name: _limit_field(spec.kind) for spec in LIMIT_SPECS}, name="RiskLimits"
)


class LimitsViewSchema(ApiSchema):
    """A scope's limits: its own values (null: inherited), those in force, and where each comes from."""

    account_id = fields.String(allow_none=True)
    limits = fields.Nested(RiskLimitsSchema)
    effective = fields.Nested(RiskLimitsSchema)
    sources = fields.Dict(keys=fields.String(), values=fields.String())
    updated_at = UtcDateTime(allow_none=True)
    updated_by = fields.String(allow_none=True)


class LimitChangeSchema(ApiSchema):
    """A change of limits: the new values (null: inherit / off) and why."""

    limits = fields.Nested(RiskLimitsSchema, required=True)
    reason = Text(load_default=None, allow_none=True)


class HaltSchema(ApiSchema):
    """A halt in force (``accountId`` null: every account)."""

    account_id = Identifier(load_default=None, allow_none=True)
    reason = Text(required=True, validate=lambda text: bool(text.strip()))
    halted_by = fields.String(dump_only=True)
    since = UtcDateTime(dump_only=True)


class RestrictionSchema(ApiSchema):
    """A restricted symbol (``accountId`` null: for every account)."""

    symbol = Identifier(required=True)
    account_id = Identifier(load_default=None, allow_none=True)
    reason = Text(load_default=None, allow_none=True)


class ScopeArgsSchema(ApiSchema):
    """Which scope a DELETE is for (no accountId: the global one)."""

    account_id = Identifier(load_default=None)


class RestrictionArgsSchema(ScopeArgsSchema):
    """Which restriction a DELETE lifts."""

    symbol = Identifier(required=True)
    reason = Text(load_default=None)


class HaltListSchema(ApiSchema):
    """Every halt in force."""

    halts = fields.List(fields.Nested(HaltSchema))


class RestrictionListSchema(ApiSchema):
    """Every restricted symbol."""

    restricted_symbols = fields.List(fields.Nested(RestrictionSchema))


# ---- plumbing ---------------------------------------------------------------------------------------------


@blp.before_request
def _authorise() -> None:
    """A valid bearer token with the ``operations`` scope, checked before the body is read."""
    principal = bearer_principal()
    if not principal.has_scope(SCOPE_OPERATIONS):
        raise Forbidden(f"this token lacks the scope {SCOPE_OPERATIONS}")
    g.principal = principal


def _principal() -> Principal:
    principal: Principal = g.principal
    return principal


def _require_scope_of(account_id: str | None) -> None:
    """Raise Forbidden unless the token may act on ``account_id`` (None: every account, the global setting).

    Checked before the account is looked up, so a token learns nothing about accounts it was not granted.
    """
    principal = _principal()
    if account_id is None:
        if not principal.all_accounts:
            raise Forbidden('global risk settings need a token for every account (accounts: ["*"])')
    elif not principal.may_use(account_id):
        raise Forbidden(f"this token does not grant account {account_id}")


def _may_see(account_id: str | None) -> bool:
    principal = _principal()
    return principal.all_accounts if account_id is None else principal.may_use(account_id)


def _engine() -> Engine:
    engine: Engine = current_app.extensions[ENGINE_KEY]
    return engine


def _author() -> str:
    return _principal().subject


def _view(view: admin.LimitsView) -> dict[str, Any]:
    return {
        "account_id": view.account_id,
        "limits": view.own,
        "effective": view.effective.as_dict(),
        "sources": view.sources,
        "updated_at": view.updated_at,
        "updated_by": view.updated_by,
    }


def _show(account_id: str | None) -> dict[str, Any]:
    _require_scope_of(account_id)
    try:
        with _engine().connect() as connection:
            return _view(admin.show_limits(connection, account_id))
    except admin.UnknownAccount as exc:
        raise NotFound(str(exc)) from exc


def _change(account_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
    _require_scope_of(account_id)
    try:
        with _engine().begin() as connection:
            admin.set_limits(connection, account_id, body["limits"], by=_author(), reason=body.get("reason"))
            return _view(admin.show_limits(connection, account_id))
    except admin.UnknownAccount as exc:
        raise NotFound(str(exc)) from exc
    except InvalidLimit as exc:
        raise InvalidRequest("Invalid limits", [FieldError("limits", str(exc))]) from exc


def _halt(halt: Halt) -> dict[str, Any]:
    return {"account_id": halt.account_id, "reason": halt.reason, "halted_by": halt.halted_by, "since": halt.since}


def _restriction(r: Restriction) -> dict[str, Any]:
    return {"symbol": r.symbol, "account_id": r.account_id, "reason": r.reason}


# Error responses name their body schema, so the served document shows their {message, code}.
_FORBIDDEN = {
    "schema": MessageSchema,
    "description": 'The token lacks the operations scope, or the account (global settings: every account, "*")',
}


# ---- views ------------------------------------------------------------------------------------------------


@blp.route("/limits")
class GlobalLimits(MethodView):
    """The global limits."""

    @blp.doc(operationId="getGlobalRiskLimits")
    @blp.response(200, LimitsViewSchema)
    @blp.alt_response(403, **_FORBIDDEN)
    def get(self) -> dict[str, Any]:
        """The global limits (null: the rule is off)."""
        return _show(None)

    @blp.doc(operationId="setGlobalRiskLimits")
    @blp.arguments(LimitChangeSchema)
    @blp.response(200, LimitsViewSchema)
    @blp.alt_response(400, response="BadRequest")
    @blp.alt_response(403, **_FORBIDDEN)
    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        """Change global limits: only the limits named change; null switches a rule off."""
        return _change(None, body)


@blp.route("/limits/<accountId>")
class AccountLimits(MethodView):
    """One account's limits."""

    @blp.doc(operationId="getAccountRiskLimits")
    @blp.response(200, LimitsViewSchema)
    @blp.alt_response(403, **_FORBIDDEN)
    @blp.alt_response(404, schema=MessageSchema, description="No such account")
    def get(self, accountId: str) -> dict[str, Any]:
        """The account's own limits (null: inherited) and those in force."""
        return _show(accountId)

    @blp.doc(operationId="setAccountRiskLimits")
    @blp.arguments(LimitChangeSchema)
    @blp.response(200, LimitsViewSchema)
    @blp.alt_response(400, response="BadRequest")
    @blp.alt_response(403, **_FORBIDDEN)
    @blp.alt_response(404, schema=MessageSchema, description="No such account")
    def put(self, body: dict[str, Any], accountId: str) -> dict[str, Any]:
        """Change the account's limits: only the limits named change; null inherits the global value."""
        return _change(accountId, body)


@blp.route("/halts")
class Halts(MethodView):
    """The kill switch."""

    @blp.doc(operationId="listTradingHalts")
    @blp.response(200, HaltListSchema)
    @blp.alt_response(403, **_FORBIDDEN)
    def get(self) -> dict[str, Any]:
        """Every halt in force."""
        with _engine().connect() as connection:
            return {"halts": [_halt(h) for h in admin.halts(connection) if _may_see(h.account_id)]}

    @blp.doc(operationId="haltTrading")
    @blp.arguments(HaltSchema)
    @blp.response(201, HaltSchema, description="Halted")
    @blp.alt_response(200, schema=HaltSchema, description="Already halted: the halt in force", success=True)
    @blp.alt_response(400, response="BadRequest")
    @blp.alt_response(403, **_FORBIDDEN)
    @blp.alt_response(404, schema=MessageSchema, description="No such account")
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Halt new orders of an account, or of every account (no accountId). Cancels still go through."""
        _require_scope_of(body.get("account_id"))
        try:
            with _engine().begin() as connection:
                halt, new = admin.halt(connection, body.get("account_id"), by=_author(), reason=body["reason"])
        except admin.UnknownAccount as exc:
            raise NotFound(str(exc)) from exc
        return _halt(halt), 201 if new else 200

    @blp.doc(operationId="resumeTrading")
    @blp.arguments(ScopeArgsSchema, location="query")
    @blp.response(204, description="Resumed")
    @blp.alt_response(403, **_FORBIDDEN)
    @blp.alt_response(404, schema=MessageSchema, description="No such halt")
    def delete(self, args: dict[str, Any]) -> None:
        """Lift the halt of an account, or the global one (no accountId)."""
        account_id = args.get("account_id")
        _require_scope_of(account_id)
        with _engine().begin() as connection:
            if not admin.resume(connection, account_id, by=_author(), reason=None):
                raise NotFound(f"no halt in force for {account_id or 'all accounts'}")


@blp.route("/restricted-symbols")
class RestrictedSymbols(MethodView):
    """Restricted symbols."""

    @blp.doc(operationId="listRestrictedSymbols")
    @blp.response(200, RestrictionListSchema)
    @blp.alt_response(403, **_FORBIDDEN)
    def get(self) -> dict[str, Any]:
        """Every restricted symbol."""
        with _engine().connect() as connection:
            return {
                "restricted_symbols": [
                    _restriction(r) for r in admin.restrictions(connection) if _may_see(r.account_id)
                ]
            }

    @blp.doc(operationId="restrictSymbol")
    @blp.arguments(RestrictionSchema)
    @blp.response(201, RestrictionSchema, description="Restricted")
    @blp.alt_response(200, schema=RestrictionSchema, description="Already restricted", success=True)
    @blp.alt_response(400, response="BadRequest")
    @blp.alt_response(403, **_FORBIDDEN)
    @blp.alt_response(404, schema=MessageSchema, description="No such account or instrument")
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Restrict a symbol for an account, or for every account (no accountId)."""
        restriction = Restriction(body.get("account_id"), body["symbol"], body.get("reason"))
        _require_scope_of(restriction.account_id)
        try:
            with _engine().begin() as connection:
                new = admin.restrict(
                    connection, restriction.account_id, restriction.symbol, by=_author(), reason=restriction.reason
                )
        except (admin.UnknownAccount, admin.UnknownSymbol) as exc:
            raise NotFound(str(exc)) from exc
        return _restriction(restriction), 201 if new else 200

    @blp.doc(operationId="unrestrictSymbol")
    @blp.arguments(RestrictionArgsSchema, location="query")
    @blp.response(204, description="No longer restricted")
    @blp.alt_response(403, **_FORBIDDEN)
    @blp.alt_response(404, schema=MessageSchema, description="The symbol was not restricted there")
    def delete(self, args: dict[str, Any]) -> None:
        """Lift a restriction of an account, or a global one (no accountId)."""
        account_id, symbol = args.get("account_id"), args["symbol"]
        _require_scope_of(account_id)
        with _engine().begin() as connection:
            if not admin.unrestrict(connection, account_id, symbol, by=_author(), reason=args.get("reason")):
                raise NotFound(f"{symbol} is not restricted for {account_id or 'all accounts'}")


def register(app: Flask, api: Api, engine: Engine) -> None:
    """Serve the blueprint through ``api`` (documented in ``/openapi.json``), with ``engine``."""
    app.extensions[ENGINE_KEY] = engine
    api.register_blueprint(blp)
