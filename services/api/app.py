"""The REST application: ``create_app`` wires the order, health, risk and event routes into one Flask app."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import Engine

from common.settings import Settings
from services.api import events_routes, health_routes, order_routes, risk_admin
from services.api.auth import TokenService
from services.api.blueprints import EXTENSION
from services.api.error_handlers import install_error_handlers
from services.api.health import ReadinessProbe, answer_503_while_the_database_is_away
from services.api.http_metrics import install_metrics
from services.api.json_provider import DecimalJSONProvider
from services.api.openapi import create_api, install_swagger_ui_assets
from services.api.order_service import OrderService
from services.api.rate_limit import FrontEndLimits


def create_app(
    settings: Settings,
    engine: Engine,
    tokens: TokenService | None = None,
    readiness: ReadinessProbe | None = None,
    limits: FrontEndLimits | None = None,
    read_engine: Engine | None = None,
) -> Flask:
    """The REST application (the same WSGI app gunicorn serves and tests drive).

    ``limits``: the rate limits, by default those of ``settings.api``; a request that meets a database outage
    is answered 503 (``answer_503_while_the_database_is_away``). ``read_engine``: the order queries' engine
    (``services.api.database.query_engine``), ``engine`` when None; writes and their answers use ``engine``.
    """
    limits = limits or FrontEndLimits.from_settings(settings.api)
    app = Flask("oms.api")
    app.json = DecimalJSONProvider(app)
    app.extensions[EXTENSION] = {
        "tokens": tokens or TokenService.from_settings(settings.api),
        "service": OrderService(engine, limits, read_engine),
        "readiness": readiness or ReadinessProbe(engine, settings.infra.amqp_urls),
        "limits": limits,
    }
    api = create_api(app)
    api.register_blueprint(order_routes.blp)
    api.register_blueprint(health_routes.blp)
    risk_admin.register(app, api, engine)
    events_routes.register(app, api, read_engine or engine)
    install_error_handlers(app)
    answer_503_while_the_database_is_away(app)
    install_metrics(app)
    install_swagger_ui_assets(app)
    return app
