"""The REST health endpoints: ``/health/live`` and ``/health/ready`` (no token needed)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from services.api.blueprints import ApiBlueprint, extension
from services.api.health import UP, ReadinessProbe
from services.api.schemas import HealthSchema

blp = ApiBlueprint("Health", __name__, description="Liveness and readiness", url_prefix="/health")


@blp.route("/live")
class LiveResource(MethodView):
    """Liveness."""

    @blp.doc(operationId="liveness", security=[])
    @blp.response(200, HealthSchema, description="The process is up")
    def get(self) -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": UP}


@blp.route("/ready")
class ReadyResource(MethodView):
    """Readiness."""

    @blp.doc(operationId="readiness", security=[])
    @blp.response(200, HealthSchema, description="The database and the broker answer")
    @blp.alt_response(503, schema=HealthSchema, description="A dependency does not answer")
    def get(self) -> tuple[dict[str, Any], int]:
        """Readiness: the database answers SELECT 1 and the broker accepts an AMQP connection."""
        probe: ReadinessProbe = extension()["readiness"]
        result = probe.check()
        return {"status": UP if result.ready else "DOWN", "checks": result.checks}, 200 if result.ready else 503
