"""``./oms config``: the configuration reference, generated from the settings model, and the settings in force.

    ./oms config docs            # write docs/configuration.md from common/settings.py
    ./oms config docs --check    # exit 1 when docs/configuration.md is out of date (tests/unit/test_settings.py)
    ./oms config show            # the settings this environment gives, as JSON (the JWT secret hidden)

Also ``python -m tools.configdoc docs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from common.settings import DOC_REPO_ROOT, REPO_ROOT, SECTIONS, Settings, load_settings
from tools.generated import write_or_check

DOCUMENT = REPO_ROOT / "docs" / "configuration.md"
REGENERATE = "./oms config docs"

_TYPE_NAMES: dict[Any, str] = {
    int: "integer",
    float: "number",
    Decimal: "decimal",
    str: "text",
    Path: "path",
    bool: "boolean",
    date: "date (YYYY-MM-DD)",
    SecretStr: "secret",
}

# Read by the `./oms` tools, the test runner and docker-compose.yml only, never by a service process; listed
# here so that every OMS_* variable is documented in one place. (variable, default, what it does)
TOOL_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("OMS_PYTHON", "python3", "The interpreter `./oms` runs when there is no `.venv`."),
    ("OMS_DEBUG", "(unset)", "Any value: an `./oms` command that fails shows the traceback."),
    ("OMS_METRICS_PORT_BASE", "9101", "`./oms up`: the first of the workers' metrics ports (one slot each)."),
    ("OMS_INFRA", "(unset)", "`docker`: `./oms infra` runs the servers with docker compose."),
    ("OMS_INFRA_TIMEOUT", "120", "`./oms infra`: seconds to wait for a server to be ready."),
    ("OMS_RABBITMQ_MGMT_PORT", "15679", "`./oms infra`: port of the local RabbitMQ's management UI."),
    ("OMS_RABBITMQ_DIST_PORT", "25679", "`./oms infra`: the local RabbitMQ node's distribution port."),
    ("OMS_RABBITMQ_NODENAME", "oms-rabbit@localhost", "`./oms infra`: the local RabbitMQ node's name."),
    (
        "OMS_RABBITMQ_SCHEDULERS",
        "half the cores, at least 1",
        "`./oms infra`: the local RabbitMQ node's Erlang schedulers (it shares the machine with the pipeline); 0:"
        " one per core, Erlang's default (docs/design.md, Sessions 13 and 14).",
    ),
    ("OMS_RABBITMQ_PROMETHEUS_PORT", "15692", "docker-compose.yml: host port of RabbitMQ's metrics."),
    ("OMS_PROMETHEUS_PORT", "9090", "docker-compose.yml: host port of Prometheus."),
    ("OMS_GRAFANA_PORT", "3000", "docker-compose.yml: host port of Grafana."),
    ("OMS_INTAKE_REPLICAS", "1", "compose: replicas of the intake stage."),
    ("OMS_RISK_GATE_REPLICAS", "1", "compose: replicas of the risk_gate stage."),
    ("OMS_ROUTER_REPLICAS", "1", "compose: replicas of the router stage."),
    (
        "OMS_EXECUTION_HANDLER_REPLICAS",
        "1",
        "compose: replicas of the execution_handler stage.",
    ),
    ("OMS_SETTLEMENT_REPLICAS", "1", "compose: replicas of the settlement stage."),
    ("OMS_TEST_DATABASE_URL", "(unset)", "Tests: the database server to use (`./oms test` sets it)."),
    ("OMS_TEST_AMQP_URL", "(unset)", "Tests: the broker to use (`./oms test` sets it)."),
    ("OMS_TEST_MANAGEMENT_URL", "(unset)", "Tests: the broker's management API (`./oms test` sets it)."),
    ("OMS_TEST_CRASH_AFTER_COMMIT", "(unset)", "Fault tests: `<stage>[:<file>]` crashes a stage after a commit."),
    ("OMS_FAULT_KEEP", "(unset)", "Fault tests: keep the logs and the servers' data of a run."),
)


def _constraints(field: FieldInfo) -> str:
    marks = []
    for item in field.metadata:
        for kind, sign in ((annotated_types.Ge, ">="), (annotated_types.Gt, ">"), (annotated_types.Le, "<=")):
            if isinstance(item, kind):
                marks.append(f"{sign} {getattr(item, kind.__name__.lower())}")
    return f" ({', '.join(marks)})" if marks else ""


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        return f"{type_name(kinds[0])}, optional" if len(kinds) == 1 else " or ".join(map(type_name, kinds))
    if origin in (frozenset, set, list, tuple):
        (item,) = get_args(annotation)[:1]
        return f"list of {type_name(item)}, comma-separated"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(field: FieldInfo) -> str:
    """The default as a reader would write it (paths under the checkout shown from its root)."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "default_doc" in extra:
        return str(extra["default_doc"])
    value = field.default
    if value is PydanticUndefined or value is None:
        return "(unset)"
    if isinstance(value, Path):
        return str(value).replace(str(REPO_ROOT), DOC_REPO_ROOT)
    if isinstance(value, frozenset | set):
        return ",".join(sorted(map(str, value))) or "(none)"
    return str(value)


def _variables(field: FieldInfo) -> str:
    alias = field.validation_alias
    names = [str(c) for c in getattr(alias, "choices", [alias])]
    first, *fallbacks = names
    return f"`{first}`" + "".join(f", else `{name}`" for name in fallbacks)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def document() -> str:
    """docs/configuration.md as it should read."""
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from common/settings.py by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every OMS process reads its settings from `OMS_*` environment variables once, when it starts",
        "(`common.settings.load_settings`), and passes them down; nothing reads the environment later. A value",
        "that does not validate stops the start with one line naming the variable, e.g.",
        "`invalid configuration: OMS_BATCH_SIZE: Input should be a valid integer ... (got 'abc')`, and exit code 2.",
        "An empty variable counts as unset. `./oms config show` prints the settings the current environment gives.",
        "",
        "Each section below is one attribute of `Settings` (`settings.<section>.<field>`).",
        "",
    ]
    for section_name, section in SECTIONS.items():
        lines += [f"## `{section_name}`: {section.__doc__}", ""]
        lines += ["| Variable | Setting | Type | Default | Description |", "| --- | --- | --- | --- | --- |"]
        for field_name, field in section.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            kind = str(extra.get("type_doc") or type_name(field.annotation)) + _constraints(field)
            cells = [
                _variables(field),
                f"`{section_name}.{field_name}`",
                kind,
                f"`{default_text(field)}`",
                _cell(field.description or ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Read by the tools only",
        "",
        "Not settings of any service process: the `./oms` command, the test runner and docker-compose.yml read them.",
        "",
        "| Variable | Default | Description |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{name}` | `{default}` | {what} |" for name, default, what in TOOL_VARIABLES]
    return "\n".join(lines) + "\n"


def _show() -> int:
    settings: Settings = load_settings()
    print(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``docs [--check] [--output FILE]`` or ``show``."""
    parser = argparse.ArgumentParser(prog="oms config", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    docs = commands.add_parser("docs", help="write docs/configuration.md from the settings model")
    docs.add_argument("--check", action="store_true", help="exit 1 when the file is out of date; write nothing")
    docs.add_argument("--output", type=Path, default=DOCUMENT, help=f"default: {DOCUMENT.relative_to(REPO_ROOT)}")
    commands.add_parser("show", help="print the settings of this environment as JSON")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "show":
        return _show()
    return write_or_check(args.output, document(), check=args.check, regenerate=REGENERATE)


if __name__ == "__main__":
    raise SystemExit(main())
