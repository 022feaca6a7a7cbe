"""The router stage: ``RouteNew``/``RouteCancel``/``RouteReplace`` from ``oms``/``router.*``."""

from __future__ import annotations

from common.contracts import RouteCancelSchema, RouteNewSchema, RouteReplaceSchema
from common.runtime.stage import StageSpec
from services.intake.commands import ROUTE_CANCEL_KEY, ROUTE_NEW_KEY, ROUTE_REPLACE_KEY
from services.router.handlers import handle_route, lock_requests

SPEC = StageSpec(
    stage="router",
    schemas={
        ROUTE_NEW_KEY: RouteNewSchema(),
        ROUTE_CANCEL_KEY: RouteCancelSchema(),
        ROUTE_REPLACE_KEY: RouteReplaceSchema(),
    },
    handler=handle_route,
    prepare=lock_requests,
)
