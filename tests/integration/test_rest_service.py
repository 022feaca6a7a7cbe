"""REST: the served OpenAPI document covers the specification's, the docs page, health, metrics, plain errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient
from sqlalchemy import Engine

from common import jsonutil
from common.settings import InfraSettings, Settings
from services.api.app import create_app
from services.api.health import ReadinessProbe
from tests.support.api import bearer, token_service
from tests.support.db import open_engine

SPEC = Path(__file__).resolve().parents[2] / "proto" / "openapi.yaml"  # the specification's, as it stands


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url, demo_data=False) as engine:
        yield engine


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """The node with every local $ref replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target, root)
        return {key: _resolve(value, root) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, root) for item in node]
    return node


def _covers(spec: dict[str, Any], served: dict[str, Any], where: str) -> list[str]:
    """What the served schema lacks of the specification's (same types, enums, formats, properties)."""
    problems: list[str] = []
    for key in ("type", "format", "enum", "default"):
        if key in spec and spec.get(key) != served.get(key):
            problems.append(f"{where}: {key} {served.get(key)!r} != {spec[key]!r}")
    for name, prop in spec.get("properties", {}).items():
        if name not in served.get("properties", {}):
            problems.append(f"{where}: property {name} missing")
        else:
            problems += _covers(prop, served["properties"][name], f"{where}.{name}")
    if "items" in spec:
        problems += _covers(spec["items"], served.get("items", {}), f"{where}[]")
    missing_required = set(spec.get("required", [])) - set(served.get("required", []))
    if missing_required:
        problems.append(f"{where}: not required: {sorted(missing_required)}")
    return problems


def test_served_document_is_a_superset_of_the_specification(client: FlaskClient) -> None:
    if not SPEC.exists():
        pytest.skip(f"specification not found at {SPEC}")
    raw_spec = yaml.safe_load(SPEC.read_text())
    raw_served = client.get("/openapi.json").get_json()
    spec, served = _resolve(raw_spec, raw_spec), _resolve(raw_served, raw_served)
    assert served["openapi"].startswith("3.0")
    for kind in ("schemas", "responses"):
        assert set(raw_spec["components"][kind]) <= set(raw_served["components"][kind]), kind
    problems: list[str] = []
    for path, operations in spec["paths"].items():
        assert path in served["paths"], path
        for method, operation in operations.items():
            mine = served["paths"][path].get(method)
            assert mine is not None, (path, method)
            where = f"{method.upper()} {path}"
            assert mine["operationId"] == operation["operationId"], where
            assert operation["tags"] == mine["tags"], where
            params = {(p["name"], p["in"]): p for p in mine.get("parameters", [])}
            params |= {(p["name"], p["in"]): p for p in served["paths"][path].get("parameters", [])}
            for param in operation.get("parameters", []):
                key = (param["name"], param["in"])
                assert key in params, (where, key)
                problems += _covers(param["schema"], params[key]["schema"], f"{where} {key}")
            if "requestBody" in operation:
                problems += _covers(
                    operation["requestBody"]["content"]["application/json"]["schema"],
                    mine["requestBody"]["content"]["application/json"]["schema"],
                    f"{where} body",
                )
            for code, response in operation["responses"].items():
                assert str(code) in mine["responses"], (where, code)
                if "content" in response:
                    problems += _covers(
                        response["content"]["application/json"]["schema"],
                        mine["responses"][str(code)]["content"]["application/json"]["schema"],
                        f"{where} {code}",
                    )
            # 400 and 401 point at the specification's own response components.
            for code, name in (("400", "BadRequest"), ("401", "Unauthorized")):
                if code in operation["responses"]:
                    assert raw_served["paths"][path][method]["responses"][code] == {
                        "$ref": f"#/components/responses/{name}"
                    }
    assert not problems, "\n".join(problems)


def test_document_adds_what_this_service_does(client: FlaskClient) -> None:
    served = client.get("/openapi.json").get_json()
    post = served["paths"]["/orders"]["post"]
    assert {"200", "201", "403"} <= set(post["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in post["parameters"])
    assert "409" in served["paths"]["/orders/{orderId}"]["put"]["responses"]
    assert served["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert served["security"] == [{"bearerAuth": []}]
    assert served["paths"]["/health/ready"]["get"]["security"] == []


def test_docs_page_browses_the_document(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "swagger-ui" in page and "/openapi.json" in page


def test_liveness(client: FlaskClient) -> None:
    response = client.get("/health/live")
    assert response.status_code == 200 and response.get_json() == {"status": "UP"}


def test_readiness_checks_database_and_broker(client: FlaskClient) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"status": "UP", "checks": {"database": "UP", "broker": "UP"}}


def test_readiness_reports_a_dependency_down(engine: Engine, database_url: str, tmp_path: Path) -> None:
    dead_broker = "amqp://guest:guest@127.0.0.1:1/"
    app = create_app(
        Settings(infra=InfraSettings(database_url=database_url, amqp_url=dead_broker)),
        engine,
        tokens=token_service(),
        readiness=ReadinessProbe(engine, dead_broker, cache_seconds=0),
    )
    response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "DOWN" and body["checks"]["database"] == "UP"
    assert body["checks"]["broker"].startswith("DOWN")


def test_metrics_count_requests(client: FlaskClient) -> None:
    client.get("/orders", headers={"Authorization": bearer()})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'oms_http_requests_total{endpoint="/orders",method="GET",status="200"}' in text
    assert "oms_http_request_seconds_bucket" in text


def test_unknown_path_and_method_keep_the_error_shape(client: FlaskClient) -> None:
    missing = client.get("/nowhere", headers={"Authorization": bearer()})
    assert missing.status_code == 404
    assert jsonutil.loads(missing.get_data()) == {"message": "Not found", "code": "NOT_FOUND"}
    wrong = client.delete("/orders", headers={"Authorization": bearer()})
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
    assert set(jsonutil.loads(wrong.get_data())) == {"message", "code"}
