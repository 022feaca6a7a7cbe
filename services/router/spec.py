"""The router stage: ``RouteNew``/``RouteCancel``/``RouteReplace`` from ``oms``/``router.*``."""

from __future__ import annotations

from common.messages.catalogue import ROUTE_CANCEL, ROUTE_NEW, ROUTE_REPLACE
from common.runtime.stage import StageSpec
from services.router.handlers import handle_route_cancel, handle_route_new, handle_route_replace, lock_requests

SPEC = StageSpec(
    stage="router",
    handlers={
        ROUTE_NEW: handle_route_new,
        ROUTE_CANCEL: handle_route_cancel,
        ROUTE_REPLACE: handle_route_replace,
    },
    prepare=lock_requests,
)
