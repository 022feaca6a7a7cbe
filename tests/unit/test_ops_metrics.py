"""ops/: every metric the dashboards and the alert rules name is one the code exports, and the files hang together.

The exported names are read from prometheus_client's registry after importing every module that defines
metrics (found by scanning the code for ``Counter(``/``Gauge(``/``Histogram(``/``Summary(``, so a new module
is covered without editing this test). Only a short list of metrics of other programs is allowed: Prometheus's
own ``up`` and the RabbitMQ plugin's queue gauges.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from common.settings import REPO_ROOT
from tools.processes import system

OPS = REPO_ROOT / "ops"
DASHBOARDS = sorted((OPS / "grafana" / "dashboards").glob("*.json"))
# Not the OMS's: Prometheus's scrape health, and RabbitMQ's rabbitmq_prometheus plugin (/metrics/per-object).
EXTERNAL = {"up", "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked", "rabbitmq_queue_messages"}
PROCESSES = {spec.name for spec in system(with_venue=True, with_api=True, with_jobs=True)}

_DEFINITION = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
_KEYWORDS |= {"inf", "nan"}


def _metric_modules() -> list[str]:
    """Every module of the OMS that defines a Prometheus metric at import."""
    modules = []
    for root in ("common", "services", "tools"):
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            if _DEFINITION.search(path.read_text()):
                modules.append(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
    return modules


def _exported_names() -> set[str]:
    """The sample names the registry's metrics produce (``_total`` of counters; ``_bucket`` etc. of histograms)."""
    for module in _metric_modules():
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        base = family.name
        if family.type == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif family.type in ("histogram", "summary"):
            names |= {base, f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
        else:
            names.add(base)
        names |= {sample.name for sample in family.samples}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (regexes in matchers)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables ($__rate_interval)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of a dashboard."""
    dashboard = json.loads(path.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return _exported_names()


def test_the_expression_parser_finds_metrics_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (stage, le) (rate(oms_stage_batch_seconds_bucket{x=~"a.b"}[5m]))) '
        "/ on (stage) group_left sum without (job) (up) and time() - oms_orders offset 5m > bool 0"
    )
    assert metric_names(expr) == {"oms_stage_batch_seconds_bucket", "up", "oms_orders"}
    assert metric_names("sum(rate(oms_http_requests_total[$__rate_interval]))") == {"oms_http_requests_total"}


def test_the_code_exports_the_documented_metrics(exported: set[str]) -> None:
    for name in (
        "oms_stage_messages_total",
        "oms_stage_batch_seconds_bucket",
        "oms_job_last_success_timestamp_seconds",
    ):
        assert name in exported
    assert "oms_http_requests_total" in exported  # services.api.http_metrics, found by the scan


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_metric_is_exported(path: Path, exported: set[str]) -> None:
    queries = dashboard_queries(path)
    assert queries, f"{path.name} has no queries"
    unknown = {
        (title, name) for title, expr in queries for name in metric_names(expr) if name not in exported | EXTERNAL
    }
    assert not unknown, f"{path.name} names metrics nothing exports: {sorted(unknown)}"


def test_every_alert_metric_is_exported(exported: set[str]) -> None:
    rules = alert_rules()
    assert rules
    unknown = {
        (rule["alert"], name)
        for rule in rules
        for name in metric_names(rule["expr"])
        if name not in exported | EXTERNAL
    }
    assert not unknown, f"ops/alerts.yml names metrics nothing exports: {sorted(unknown)}"


def test_the_rules_cover_what_operators_need() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    for needed in (
        "rabbitmq_queue_messages_ready",  # queue depth growing
        "oms_dead_letter_depth",  # DLQ not empty
        "oms_outbox_lag_seconds",  # outbox lag
        "up",  # a process down
        "oms_job_last_success_timestamp_seconds",  # a job stale
        "oms_job_runs_total",
        "oms_stage_messages_total",  # error rate
        "oms_http_requests_total",
        "oms_execution_anomalies_total",  # the correctness rules, kept
        "oms_invariant_violations",
    ):
        assert needed in exprs, needed
    assert all(rule["annotations"].get("summary") for rule in alert_rules())


def test_the_dashboard_covers_the_panels_asked_for() -> None:
    (path,) = [p for p in DASHBOARDS if p.name == "oms-overview.json"]
    exprs = " ".join(expr for _, expr in dashboard_queries(path))
    for needed in (
        "oms_stage_messages_total",
        "oms_stage_batch_seconds_bucket",
        "rabbitmq_queue_messages_ready",
        "oms_dead_letter_depth",
        "oms_risk_rejections_total",
        "oms_outbox_lag_seconds",
        "oms_execution_anomalies_total",
        "oms_invariant_violations",
    ):
        assert needed in exprs, needed
    dashboard = json.loads(path.read_text())
    datasources = {
        json.dumps(p["datasource"], sort_keys=True) for p in _panels(dashboard["panels"]) if "datasource" in p
    }
    assert datasources == {json.dumps({"type": "prometheus", "uid": "prometheus"}, sort_keys=True)}


def test_prometheus_scrapes_every_process_and_loads_the_rules() -> None:
    for name, port_of in (("prometheus.yml", None), ("prometheus-local.yml", "local")):
        config = yaml.safe_load((OPS / name).read_text())
        assert config["rule_files"] == ["alerts.yml"]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert PROCESSES <= set(jobs), f"{name} misses {PROCESSES - set(jobs)}"
        targets = {j: [t for sc in job["static_configs"] for t in sc["targets"]] for j, job in jobs.items()}
        if port_of is None:  # containers: every process on 9100 of its service, the front end on 8080
            for process in PROCESSES - {"api"}:
                assert targets[process] == [f"{process}:9100"]
            assert targets["api"] == ["api:8080"]
        else:  # ./oms up: OMS_METRICS_PORT_BASE (9101) plus each process's slot
            assert targets["intake"] == ["127.0.0.1:9101"]
            assert targets["jobs_scheduler"] == ["127.0.0.1:9110"]
            assert targets["api"] == ["127.0.0.1:8080"]
        assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"


def test_compose_runs_prometheus_and_grafana_behind_a_profile() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
    for service in services.values():  # every file mounted from the repository exists
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), source
    image = services["rabbitmq"]["image"]
    major, minor = (int(part) for part in re.match(r"rabbitmq:(\d+)\.(\d+)", image).groups())  # type: ignore[union-attr]
    assert (major, minor) >= (3, 13), image  # 3.10 is past its end of life
    mounts = " ".join(services["rabbitmq"]["volumes"])
    assert "definitions.json" in mounts and "enabled_plugins" in mounts
    assert "rabbitmq_prometheus" in (OPS / "rabbitmq-enabled-plugins").read_text()


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    datasource = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((OPS / "grafana/provisioning/dashboards/oms.yml").read_text())
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./ops/grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def test_the_jobs_own_job_label_is_read_as_exported_job() -> None:
    """``oms_job_*{job=...}`` names a background job, but Prometheus keeps ``job`` for the scrape job (the
    process) and stores the metric's own as ``exported_job``: grouping those by ``job`` would merge every job."""
    exprs = [rule["expr"] for rule in alert_rules()]
    exprs += [expr for path in DASHBOARDS for _, expr in dashboard_queries(path)]
    for expr in exprs:
        if "oms_job_" in expr:
            assert "exported_job" in expr and not re.search(r"\bby \(job\b|\{job[!=]", expr), expr
