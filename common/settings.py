"""The one typed settings object: every ``OMS_*`` variable a process reads, validated when the process starts.

``load_settings()`` reads the environment once, at the entry point; everything else receives the object (or the
section it needs) as a parameter. Each field names its variable (``validation_alias``) and says what it does
(``description``): docs/configuration.md is generated from them (``./oms config docs``). A value that does not
validate stops the start with one line naming the variable (``ConfigurationError``).

The variables keep their historic flat names (``OMS_BATCH_SIZE``, not ``OMS_STAGE__BATCH_SIZE``): users,
docker-compose.yml and the tools set them. A test or tool builds a section by hand (``StageSettings(batch_size=1)``),
with plain defaults; only ``Settings()`` reads the environment, for the sections it is not given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from common.settlement_calendar import parse_holidays

REPO_ROOT = Path(__file__).resolve().parent.parent

# Loopback unless asked: on a shared machine a listener on every interface lets anyone reach the API and the
# metrics. Containers set OMS_BIND_HOST=0.0.0.0 (docker-compose.yml, Dockerfile).
DEFAULT_BIND_HOST = "127.0.0.1"
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Shown in the generated documentation instead of a machine's own checkout path.
DOC_REPO_ROOT = "<repository>"


class ConfigurationError(ValueError):
    """A setting did not validate; the message is one line naming each bad variable."""


def parse_weekdays(text: str) -> frozenset[int]:
    """``mon,tue,...`` (or ``0,1,...``, Monday = 0) as weekday numbers; an unknown name raises ``ValueError``."""
    days: set[int] = set()
    for part in text.split(","):
        item = part.strip().lower()
        if not item:
            continue
        if item.isdigit() and 0 <= int(item) <= 6:
            days.add(int(item))
        elif item[:3] in WEEKDAY_NAMES:
            days.add(WEEKDAY_NAMES.index(item[:3]))
        else:
            raise ValueError(f"session weekday {item!r} is not one of {', '.join(WEEKDAY_NAMES)}")
    if not days:
        raise ValueError("at least one session weekday is needed")
    return frozenset(days)


def _comma_list(value: Any) -> Any:
    """A variable's ``A,B,C`` as a list (blanks dropped); anything else is left to the field's own validation."""
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


def read_secret_file(path: Path) -> str:
    """The secret in ``path`` (a password file), without the line end; ValueError when missing or empty."""
    try:
        secret = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def with_login(url: str, user: str | None, password: str | None) -> str:
    """``url`` with its user and/or password replaced (None: the URL's own is kept), quoted as a URL needs."""
    if user is None and password is None:
        return url
    parts = urlsplit(url)
    name = user if user is not None else unquote(parts.username or "")
    secret = password if password is not None else (None if parts.password is None else unquote(parts.password))
    login = quote(name, safe="") + ("" if secret is None else ":" + quote(secret, safe=""))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{login}@{host}", parts.path, parts.query, parts.fragment))


def amqp_node_urls(url: str, nodes: Iterable[str]) -> tuple[str, ...]:
    """``url``, then ``url`` pointed at each of ``nodes`` (``host:port``) that is not its own node, in order, each
    with the login, vhost, query (TLS options) of ``url``."""
    parts = urlsplit(url)
    login, at, _ = parts.netloc.rpartition("@")
    default_port = 5671 if parts.scheme == "amqps" else 5672
    seen = {(parts.hostname or "", parts.port or default_port)}
    urls = [url]
    for node in nodes:
        place = urlsplit(f"//{node}")
        key = (place.hostname or "", place.port or default_port)
        if key in seen:
            continue
        seen.add(key)
        urls.append(urlunsplit((parts.scheme, f"{login}{at}{node}", parts.path, parts.query, parts.fragment)))
    return tuple(urls)


def _env_names(field: FieldInfo) -> tuple[str, ...]:
    """The variables a field reads, in order of precedence."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (alias,) if isinstance(alias, str) else ()


class Section(BaseModel):
    """One section of the settings: frozen, built from its variables' names or from its fields' names."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)


class InfraSettings(Section):
    """The servers a process talks to and where it keeps files and serves /metrics."""

    pg_port: int = Field(
        default=54329,
        validation_alias="OMS_PG_PORT",
        ge=1,
        le=65535,
        description="Port of the local Postgres that `./oms infra` runs; makes the default `OMS_DATABASE_URL`.",
    )
    amqp_port: int = Field(
        default=56729,
        validation_alias="OMS_AMQP_PORT",
        ge=1,
        le=65535,
        description="Port of the local RabbitMQ that `./oms infra` runs; makes the default `OMS_AMQP_URL`.",
    )
    database_password_file: Path | None = Field(
        default=None,
        validation_alias="OMS_DATABASE_PASSWORD_FILE",
        description="File holding the database password, used instead of the one in `OMS_DATABASE_URL` (a secret).",
        json_schema_extra={"default_doc": "(the URL's)"},
    )
    # The roles' passwords, from files as compose's secrets give them (docker-compose.yml); each applies to its
    # URL below, set or inherited, so a deployment names the role in the URL and the password in a file.
    worker_database_password_file: Path | None = Field(
        default=None,
        validation_alias="OMS_WORKER_DATABASE_PASSWORD_FILE",
        description="File holding the password of `OMS_WORKER_DATABASE_URL`'s role (a secret).",
        json_schema_extra={"default_doc": "(the URL's)"},
    )
    read_database_password_file: Path | None = Field(
        default=None,
        validation_alias="OMS_READ_DATABASE_PASSWORD_FILE",
        description="File holding the password of `OMS_READ_DATABASE_URL`'s role (a secret).",
        json_schema_extra={"default_doc": "(the URL's)"},
    )
    retention_database_password_file: Path | None = Field(
        default=None,
        validation_alias="OMS_RETENTION_DATABASE_PASSWORD_FILE",
        description="File holding the password of `OMS_RETENTION_DATABASE_URL`'s role (a secret).",
        json_schema_extra={"default_doc": "(the URL's)"},
    )
    amqp_user: str | None = Field(
        default=None,
        validation_alias="OMS_AMQP_USER",
        min_length=1,
        description=(
            "RabbitMQ user to log in as instead of the one in `OMS_AMQP_URL`: each kind of process has its own "
            "(`./oms up` and docker-compose.yml set it; docs/design.md, Broker users and secrets)."
        ),
        json_schema_extra={"default_doc": "(the URL's)"},
    )
    amqp_password_file: Path | None = Field(
        default=None,
        validation_alias="OMS_AMQP_PASSWORD_FILE",
        description="File holding the RabbitMQ password, used instead of the one in `OMS_AMQP_URL` (a secret).",
        json_schema_extra={"default_doc": "(the URL's)"},
    )
    database_url: str = Field(
        default_factory=lambda data: f"postgresql+psycopg://oms:oms@127.0.0.1:{data.get('pg_port', 54329)}/oms",
        validation_alias="OMS_DATABASE_URL",
        min_length=1,
        description="SQLAlchemy URL of the database; TLS: add `?sslmode=verify-full&sslrootcert=<CA file>` (libpq's "
        "parameters pass through, and every URL made from this one keeps them).",
        json_schema_extra={"default_doc": "postgresql+psycopg://oms:oms@127.0.0.1:$OMS_PG_PORT/oms"},
        validate_default=True,  # the password file applies to the default URL too
    )
    # Least privilege (migration 0008 grants each role its part): OMS_DATABASE_URL is the schema owner's, for
    # migrations and the tools; the processes connect as the roles below. Each URL defaults to the one before
    # it, so a deployment that sets only OMS_DATABASE_URL runs as before.
    worker_database_url: str = Field(
        default_factory=lambda data: data.get("database_url", ""),
        validation_alias="OMS_WORKER_DATABASE_URL",
        min_length=1,
        description="SQLAlchemy URL the stage workers, relay, jobs, venue and the API connect with: a role that "
        "reads and writes the OMS's rows but may neither change the schema nor update or delete `order_events`.",
        json_schema_extra={"default_doc": "$OMS_DATABASE_URL"},
        validate_default=True,  # its password file applies to the inherited URL too
    )
    read_database_url: str = Field(
        default_factory=lambda data: data.get("worker_database_url", ""),
        validation_alias="OMS_READ_DATABASE_URL",
        min_length=1,
        description=(
            "SQLAlchemy URL of the read side: a role that may only SELECT (`./oms audit verify`), and the API's "
            "order queries when it differs from `OMS_WORKER_DATABASE_URL` (a replica: docs/design.md, Reading "
            "from a replica; libpq's multi-host form and `target_session_attrs` work: docs/operations.md)."
        ),
        json_schema_extra={"default_doc": "$OMS_WORKER_DATABASE_URL"},
        validate_default=True,
    )
    retention_database_url: str = Field(
        default_factory=lambda data: data.get("database_url", ""),
        validation_alias="OMS_RETENTION_DATABASE_URL",
        min_length=1,
        description="SQLAlchemy URL the retention job deletes with: a role that may delete expired rows and "
        "whole `order_events` chains of closed orders (the workers' role may not).",
        json_schema_extra={"default_doc": "$OMS_DATABASE_URL"},
        validate_default=True,
    )
    worker_role: str = Field(
        default="oms_worker",
        validation_alias="OMS_DB_WORKER_ROLE",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Postgres role the migrations grant the workers' rights to (skipped if it does not exist).",
    )
    reader_role: str = Field(
        default="oms_reader",
        validation_alias="OMS_DB_READER_ROLE",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Postgres role the migrations grant SELECT to (skipped if it does not exist).",
    )
    retention_role: str = Field(
        default="oms_retention",
        validation_alias="OMS_DB_RETENTION_ROLE",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Postgres role the migrations grant retention's deletes to (skipped if it does not exist).",
    )
    amqp_url: str = Field(
        default_factory=lambda data: f"amqp://guest:guest@127.0.0.1:{data.get('amqp_port', 56729)}/",
        validation_alias="OMS_AMQP_URL",
        min_length=1,
        description="AMQP URL of RabbitMQ (its path is the vhost); `guest` logs in from this machine only. TLS: "
        "`amqps://...?cafile=<CA file>` (aio-pika reads the CA from the URL; dramatiq's pika is given it).",
        json_schema_extra={"default_doc": "amqp://guest:guest@127.0.0.1:$OMS_AMQP_PORT/"},
        validate_default=True,  # the user and password file apply to the default URL too
    )
    amqp_nodes: tuple[str, ...] = Field(
        default=(),
        validation_alias="OMS_AMQP_NODES",
        description=(
            "The RabbitMQ cluster's nodes as `host:port,host:port,...` (the URL's own may be among them). Every "
            "AMQP client connects to the URL's node first, then to the next that answers, and moves on to another "
            "node when its own is lost, resuming its consumers there; each with the URL's login, vhost and options."
            " Empty: the URL's node alone (`./oms infra start --rabbit-nodes 3` and `./oms up` set it)."
        ),
        json_schema_extra={"default_doc": "(the URL's node alone)"},
    )
    amqp_declare_topology: bool = Field(
        default=True,
        validation_alias="OMS_AMQP_DECLARE_TOPOLOGY",
        description=(
            "Declare the broker topology at start (every stage queue: nothing sent before a stage first starts is "
            "lost). `false`: the broker's definitions own it (ops/rabbitmq-definitions.json) and a process only "
            "looks its queue up, as a per-process user with no right to declare must (`./oms up`, compose)."
        ),
    )
    data_dir: Path = Field(
        default=REPO_ROOT / ".data",
        validation_alias="OMS_DATA_DIR",
        description="Folder of the local data: logs, pid files, the API's metrics folder.",
    )
    data_keys_file: Path = Field(
        default=REPO_ROOT / ".data" / "data-keys.json",
        validation_alias="OMS_DATA_KEYS_FILE",
        description=(
            "Key ring (JSON, mode 600: AES-256 keys by `kid`, and the `current` one) that encrypts client text at"
            " rest (order notes, cancel reasons); made at first use for local development; kept by"
            " `./oms data-keys rotate | reencrypt | remove | status`, re-read by running processes when it changes."
            " A secret: never commit it."
        ),
    )
    bind_host: str = Field(
        default=DEFAULT_BIND_HOST,
        validation_alias="OMS_BIND_HOST",
        min_length=1,
        description="Address every listener binds unless its own variable says otherwise (`0.0.0.0` in containers).",
    )
    metrics_host: str = Field(
        default=DEFAULT_BIND_HOST,
        validation_alias=AliasChoices("OMS_METRICS_HOST", "OMS_BIND_HOST"),
        min_length=1,
        description="Address of each worker's /metrics and /health server.",
    )
    metrics_port: int = Field(
        default=0,
        validation_alias="OMS_METRICS_PORT",
        ge=0,
        le=65535,
        description="Port of this process's /metrics and /health server; 0: none (`./oms up` gives each its own).",
    )

    # The login a process is given apart from its URL (a compose secret, `./oms up`'s per-process users) is
    # written into the URL here, once, so everything that connects keeps using ``database_url``/``amqp_url``.
    @field_validator(
        "database_password_file",
        "worker_database_password_file",
        "read_database_password_file",
        "retention_database_password_file",
        "amqp_password_file",
    )
    @classmethod
    def _readable_secret(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_secret_file(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_login(cls, value: str, info: ValidationInfo) -> str:
        file = info.data.get("database_password_file")
        return with_login(value, None, None if file is None else read_secret_file(file))

    @field_validator("worker_database_url", "read_database_url", "retention_database_url")
    @classmethod
    def _role_login(cls, value: str, info: ValidationInfo) -> str:
        file = info.data.get(f"{str(info.field_name).removesuffix('_url')}_password_file")
        return value if file is None else with_login(value, None, read_secret_file(file))

    @field_validator("amqp_url")
    @classmethod
    def _amqp_login(cls, value: str, info: ValidationInfo) -> str:
        file = info.data.get("amqp_password_file")
        return with_login(value, info.data.get("amqp_user"), None if file is None else read_secret_file(file))

    @field_validator("amqp_nodes", mode="before")
    @classmethod
    def _node_list(cls, value: Any) -> Any:
        listed = _comma_list(value)
        if isinstance(listed, list | tuple):
            for node in listed:
                host, _, port = str(node).rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"{node!r} is not host:port")
        return listed

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """Where an AMQP client may connect, in the order it tries: ``amqp_url``, then ``amqp_url`` with its host
        and port replaced by each other node of ``amqp_nodes``."""
        return amqp_node_urls(self.amqp_url, self.amqp_nodes)

    # check_fields=False: the database URLs of the roles are another part's; one renamed must not stop the start.
    @field_serializer(
        "database_url",
        "worker_database_url",
        "read_database_url",
        "retention_database_url",
        "amqp_url",
        when_used="json",
        check_fields=False,
    )
    def _hide_password(self, value: str) -> str:
        # `./oms config show` prints the settings: never a password.
        parts = urlsplit(value)
        if parts.password is None:
            return value
        netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class StageSettings(Section):
    """The stage runtime and the outbox relay: batches, redelivery, the event loop."""

    batch_size: int = Field(
        default=200,
        validation_alias="OMS_BATCH_SIZE",
        ge=1,
        description="Most deliveries a stage handles in one transaction (the prefetch is twice this).",
    )
    batch_linger_ms: float = Field(
        default=0.0,
        validation_alias="OMS_BATCH_LINGER_MS",
        ge=0,
        allow_inf_nan=False,
        description="How long a stage waits for more deliveries to fill a batch; 0: take what has arrived.",
    )
    delivery_limit: int = Field(
        default=5,
        validation_alias="OMS_DELIVERY_LIMIT",
        ge=1,
        description="Deliveries of a message before the broker dead-letters it (the quorum queues' limit).",
    )
    outbox_grace_seconds: float = Field(
        default=10.0,
        validation_alias="OMS_OUTBOX_GRACE_SECONDS",
        ge=0,
        allow_inf_nan=False,
        description="Age of an unsent outbox row before the relay publishes it in its writer's stead; keep it "
        "well above a second (a stage marks the rows it published every second, and a row still unmarked at this "
        "age is published again: harmless for the consumers' inboxes, but a copy for every other subscriber).",
    )
    outbox_poll_seconds: float = Field(
        default=1.0,
        validation_alias="OMS_OUTBOX_POLL_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How often the outbox relay looks for unsent rows.",
    )
    db_timeout_seconds: float = Field(
        default=10.0,
        validation_alias="OMS_STAGE_DB_TIMEOUT_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description=(
            "Longest a stage worker waits for a new database connection, and TCP for unacknowledged data or a"
            " silent peer on one it has, before its batch fails as an outage and is retried (with no bound, a"
            " database host gone silent held a batch, and the worker's stop, for minutes)."
        ),
    )
    db_statement_timeout_seconds: float = Field(
        default=30.0,
        validation_alias="OMS_STAGE_DB_STATEMENT_TIMEOUT_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="Longest a stage worker's statement runs, lock waits included, before Postgres cancels it "
        "and the batch is retried as after an outage.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        validation_alias="OMS_EVENT_LOOP",
        description="Event loop of the asyncio processes; `asyncio` lets a profiler see inside the loop.",
    )
    gc_threshold: int = Field(
        default=20_000,
        validation_alias="OMS_GC_THRESHOLD",
        ge=0,
        description=(
            "Allocations before Python's cyclic collector runs on its youngest generation (Python's default: 700,"
            " which a batch of 200 orders crosses several times); 0 keeps Python's. Every process also freezes"
            " what it holds once started, so the collector no longer walks it."
        ),
    )
    plan_cache_mode: Literal["adaptive", "auto", "force_generic_plan", "force_custom_plan"] = Field(
        default="adaptive",
        validation_alias="OMS_STAGE_PLAN_CACHE_MODE",
        description=(
            "Postgres's plan_cache_mode on the stage workers' connections. Their statements look rows up by arrays"
            " of keys, and under the server's `auto` Postgres plans each one again at every execution, since a plan"
            " for a batch of one always looks cheaper than the generic one; `force_generic_plan` plans each once"
            " per connection, cheaper for small batches and dearer for batches of hundreds (docs/design.md,"
            " Session 10). `adaptive`: generic plans for a batch of up to 32 messages, `auto` for a larger one."
        ),
    )
    replicas: int = Field(
        default=1,
        validation_alias="OMS_STAGE_REPLICAS",
        ge=1,
        description="How many replicas of this stage run: each consumes its share of the stage's partition "
        "queues (`./oms up --replicas` sets it; a replica past the partition count is a standby).",
    )
    replica_index: int | None = Field(
        default=None,
        validation_alias="OMS_STAGE_REPLICA_INDEX",
        ge=0,
        description="Which replica this process is, from 0 (below `OMS_STAGE_REPLICAS`); unset: the first index "
        "no live replica holds (a Postgres advisory lock), as under compose's `deploy.replicas`.",
    )

    @model_validator(mode="after")
    def _replica_in_range(self) -> StageSettings:
        if self.replica_index is not None and self.replica_index >= self.replicas:
            raise ValueError(
                f"OMS_STAGE_REPLICA_INDEX {self.replica_index} must be below OMS_STAGE_REPLICAS {self.replicas}"
            )
        return self


class ApiSettings(Section):
    """The REST and gRPC front end and its bearer tokens."""

    host: str = Field(
        default=DEFAULT_BIND_HOST,
        validation_alias=AliasChoices("OMS_API_HOST", "OMS_BIND_HOST"),
        min_length=1,
        description="Address the REST and gRPC servers bind.",
    )
    rest_port: int = Field(default=8080, validation_alias="OMS_REST_PORT", ge=1, le=65535, description="REST port.")
    grpc_port: int = Field(default=50051, validation_alias="OMS_GRPC_PORT", ge=1, le=65535, description="gRPC port.")
    workers: int = Field(default=2, validation_alias="OMS_API_WORKERS", ge=1, description="gunicorn worker processes.")
    threads: int = Field(
        default=8, validation_alias="OMS_API_THREADS", ge=1, description="Threads of each gunicorn worker."
    )
    # Rate limits (the `limits` library). The defaults stop a runaway client, not a busy one: `oms bench --rest`
    # at 100 orders/s (a POST and a GET each, two workers) stays well under them.
    rate_limit_subject: str = Field(
        default="200/second;10000/minute",
        validation_alias="OMS_API_RATE_LIMIT_SUBJECT",
        description="Reads (REST and gRPC) one token subject may make, e.g. `50/second;1000/minute`; "
        "empty: no limit. Counted per process under `memory://` (see `OMS_API_RATE_LIMIT_STORAGE`).",
    )
    rate_limit_account: str = Field(
        default="100/second;5000/minute",
        validation_alias="OMS_API_RATE_LIMIT_ACCOUNT",
        description="Order writes (create, cancel, modify) against one account, whoever sends them; "
        "empty: no limit. Counted per process under `memory://`.",
    )
    rate_limit_storage: str = Field(
        default="memory://",
        validation_alias="OMS_API_RATE_LIMIT_STORAGE",
        min_length=1,
        description="Where the limits count: `memory://` is per process (gunicorn's workers and the gRPC child "
        "each count alone, so the effective limit is the limit times the processes); a shared URI such as "
        "`redis://host:6379` or `memcached://host:11211` (with its client package installed) counts once for all.",
    )
    rate_limit_strategy: Literal["sliding-window-counter", "fixed-window", "moving-window"] = Field(
        default="sliding-window-counter",
        validation_alias="OMS_API_RATE_LIMIT_STRATEGY",
        description="How the window is counted (`limits` strategies): the sliding counter is O(1) per request "
        "and smooths the bursts a fixed window allows at its edges.",
    )
    db_timeout_seconds: float = Field(
        default=0.5,
        validation_alias="OMS_API_DB_TIMEOUT_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="Longest the front end waits for a new database connection (and TCP waits for unacknowledged "
        "data on one it has) before answering 503 / UNAVAILABLE.",
    )
    db_statement_timeout_seconds: float = Field(
        default=5.0,
        validation_alias="OMS_API_DB_STATEMENT_TIMEOUT_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="Longest one SQL statement of the front end may run, lock waits included (Postgres "
        "`statement_timeout`), before it is answered 503 / UNAVAILABLE.",
    )
    read_pool_size: int = Field(
        default=2,
        validation_alias="OMS_API_READ_POOL_SIZE",
        ge=1,
        le=100,
        description="Connections each front-end process keeps to `OMS_READ_DATABASE_URL` for the order queries "
        "(as many more in a burst), when it differs from `OMS_WORKER_DATABASE_URL`; else the queries share the "
        "primary's pool.",
    )

    @field_validator("rate_limit_subject", "rate_limit_account")
    @classmethod
    def _rate_limits_parse(cls, value: str) -> str:
        """A limit the `limits` library cannot parse stops the start, rather than the first request."""
        if value.strip():
            from limits import parse_many  # here: only the front end needs the library loaded

            parse_many(value)
        return value.strip()

    jwt_secret: SecretStr | None = Field(
        default=None,
        validation_alias="OMS_JWT_SECRET",
        description="Legacy token secret (kid `default`; signs while the key set is empty); unset: the secret file.",
        json_schema_extra={"default_doc": "(unset)"},
    )
    jwt_secret_file: Path = Field(
        default=REPO_ROOT / ".data" / "jwt-secret",
        validation_alias="OMS_JWT_SECRET_FILE",
        description="File of the legacy token secret, generated (mode 600) at first use.",
    )
    jwt_issuer: str = Field(
        default="oms", validation_alias="OMS_JWT_ISSUER", min_length=1, description="Tokens' `iss`."
    )
    jwt_keys_file: Path = Field(
        default=REPO_ROOT / ".data" / "jwt-keys.json",
        validation_alias="OMS_JWT_KEYS_FILE",
        description=(
            "Key set (JSON, mode 600) of the token signing keys by `kid`: every key verifies, the newest signs;"
            " kept by `./oms token keys rotate | list | remove`, re-read by running servers when it changes."
        ),
    )
    jwt_accept_legacy: bool = Field(
        default=True,
        validation_alias="OMS_JWT_ACCEPT_LEGACY",
        description=(
            "Accept tokens signed with the single secret (`OMS_JWT_SECRET`/`OMS_JWT_SECRET_FILE`, kid `default`"
            " or no kid), which also signs while the key set is empty; `false` retires it."
        ),
    )
    jwt_jwks_file: Path | None = Field(
        default=None,
        validation_alias="OMS_JWT_JWKS_FILE",
        description="JWKS file of the identity provider's public keys (RS256/ES256 tokens, by `kid`); unset: none.",
        json_schema_extra={"default_doc": "(unset)"},
    )
    jwt_jwks_issuer: str | None = Field(
        default=None,
        validation_alias="OMS_JWT_JWKS_ISSUER",
        min_length=1,
        description="`iss` the identity provider's tokens must carry; unset: `OMS_JWT_ISSUER`.",
        json_schema_extra={"default_doc": "(OMS_JWT_ISSUER)"},
    )
    jwt_jwks_audience: str | None = Field(
        default=None,
        validation_alias="OMS_JWT_JWKS_AUDIENCE",
        min_length=1,
        description="`aud` the identity provider's tokens must carry; unset: tokens with an `aud` are refused.",
        json_schema_extra={"default_doc": "(unset)"},
    )


class VenueSettings(Section):
    """The simulated venue."""

    seed: int = Field(
        default=42, validation_alias="OMS_VENUE_SEED", description="Seed of the price walk and the fills."
    )
    tick_ms: float = Field(
        default=200.0,
        validation_alias="OMS_VENUE_TICK_MS",
        gt=0,
        allow_inf_nan=False,
        description="Interval between price ticks (and matching of resting orders).",
    )
    latency_ms: float = Field(
        default=0.0,
        validation_alias="OMS_VENUE_LATENCY_MS",
        ge=0,
        allow_inf_nan=False,
        description="Delay before the venue answers an order.",
    )
    partial_fills: int = Field(
        default=1,
        validation_alias="OMS_VENUE_PARTIAL_FILLS",
        ge=1,
        description="Fills a marketable order is split into.",
    )
    reject_symbols: frozenset[str] = Field(
        default=frozenset(),
        validation_alias="OMS_VENUE_REJECT_SYMBOLS",
        description="Symbols the venue rejects, comma-separated.",
    )
    max_qty: Decimal | None = Field(
        default=None,
        validation_alias="OMS_VENUE_MAX_QTY",
        gt=0,
        description="Largest quantity the venue accepts; unset: no limit.",
        json_schema_extra={"default_doc": "(no limit)"},
    )
    fee_rate: Decimal = Field(
        default=Decimal("0.0005"),
        validation_alias="OMS_VENUE_FEE_RATE",
        ge=0,
        description="Fee as a share of notional.",
    )
    volatility: Decimal = Field(
        default=Decimal("0.0005"),
        validation_alias="OMS_VENUE_VOLATILITY",
        ge=0,
        description="Relative standard deviation of one tick's price move.",
    )
    mean_reversion: Decimal = Field(
        default=Decimal("0.001"),
        validation_alias="OMS_VENUE_MEAN_REVERSION",
        ge=0,
        description="Per-tick pull of the price back to the instrument's reference price.",
    )
    prefetch: int = Field(
        default=500, validation_alias="OMS_VENUE_PREFETCH", ge=1, description="AMQP prefetch of the venue."
    )

    @field_validator("reject_symbols", mode="before")
    @classmethod
    def _symbols(cls, value: Any) -> Any:
        listed = _comma_list(value)
        return [str(s).strip().upper() for s in listed] if isinstance(listed, list | set | frozenset) else listed


class RiskSettings(Section):
    """The risk gate's reference prices and its client of the Risk Analysis Service."""

    price_staleness_seconds: float = Field(
        default=30.0,
        validation_alias="OMS_RISK_PRICE_STALENESS_SECONDS",
        ge=0,
        allow_inf_nan=False,
        description="Age past which a feed price is stale.",
    )
    no_price: Literal["instrument_reference", "reject"] = Field(
        default="instrument_reference",
        validation_alias="OMS_RISK_NO_PRICE",
        description="Without a fresh feed price: use the instrument's reference price, or reject the order.",
    )
    service_enabled: bool = Field(
        default=False,
        validation_alias="OMS_RISK_SERVICE_ENABLED",
        description="Ask the platform's Risk Analysis Service about every order too (docs/risk-service.md); "
        "fails closed: while it cannot answer, no order is approved.",
    )
    service_url: str = Field(
        default="http://127.0.0.1:8090",
        validation_alias="OMS_RISK_SERVICE_URL",
        min_length=1,
        description="Base URL of the Risk Analysis Service; the gate posts to `<url>/v1/assessments`.",
    )
    service_timeout_seconds: float = Field(
        default=0.5,
        validation_alias="OMS_RISK_SERVICE_TIMEOUT_SECONDS",
        gt=0,
        le=30,
        allow_inf_nan=False,
        description="Connect and read timeout of one call to the Risk Analysis Service.",
    )
    service_retries: int = Field(
        default=2,
        validation_alias="OMS_RISK_SERVICE_RETRIES",
        ge=0,
        le=10,
        description="Retries of a call that failed transiently (refused, timed out, 429, 5xx), with back-off.",
    )
    service_breaker_failures: int = Field(
        default=3,
        validation_alias="OMS_RISK_SERVICE_BREAKER_FAILURES",
        ge=1,
        description="Failed batches in a row (after their retries) that open the circuit breaker.",
    )
    service_breaker_reset_seconds: float = Field(
        default=10.0,
        validation_alias="OMS_RISK_SERVICE_BREAKER_RESET_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How long the breaker stays open before the next batch is a trial call.",
    )
    service_token_file: Path | None = Field(
        default=None,
        validation_alias="OMS_RISK_SERVICE_TOKEN_FILE",
        description="File holding the bearer token sent to the Risk Analysis Service; unset: no token.",
        json_schema_extra={"default_doc": "(unset)"},
    )

    @field_validator("service_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("the Risk Analysis Service URL must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("no_price", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class SessionSettings(Section):
    """The trading session (DAY order expiry) and the settlement calendar."""

    timezone: str = Field(
        default="America/New_York", validation_alias="OMS_SESSION_TZ", description="Time zone of the session close."
    )
    close: str = Field(
        default="16:00", validation_alias="OMS_SESSION_CLOSE", description="Session close, `HH:MM` in `OMS_SESSION_TZ`."
    )
    weekdays: frozenset[int] = Field(
        default=frozenset(range(5)),
        validation_alias="OMS_SESSION_WEEKDAYS",
        description="Trading days, `mon,tue,...` or `0,1,...` (Monday = 0).",
        json_schema_extra={"default_doc": "mon,tue,wed,thu,fri", "type_doc": "list of weekdays, comma-separated"},
    )
    holidays: frozenset[date] = Field(
        default=frozenset(),
        validation_alias="OMS_SESSION_HOLIDAYS",
        description="Days without a session, `YYYY-MM-DD,...`.",
        json_schema_extra={"default_doc": "(none)"},
    )
    settlement_days_equity: int = Field(
        default=1,
        validation_alias="OMS_SETTLEMENT_DAYS_EQUITY",
        ge=0,
        description="Settlement cycle of equities and ETFs in business days (T+1).",
    )
    settlement_holidays: frozenset[date] = Field(
        default=frozenset(),
        validation_alias="OMS_SETTLEMENT_HOLIDAYS",
        description="Days that are not settlement business days, `YYYY-MM-DD,...`.",
        json_schema_extra={"default_doc": "(none)"},
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("close")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        try:
            time.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a time of day HH:MM") from exc
        return value.strip()

    @field_validator("weekdays", mode="before")
    @classmethod
    def _weekdays(cls, value: Any) -> Any:
        return parse_weekdays(value) if isinstance(value, str) else value

    @field_validator("holidays", "settlement_holidays", mode="before")
    @classmethod
    def _days(cls, value: Any) -> Any:
        return parse_holidays(value) if isinstance(value, str) else value


class JobsSettings(Section):
    """The background jobs and their scheduler."""

    broker: Literal["rabbitmq", "stub"] = Field(
        default="rabbitmq",
        validation_alias="OMS_JOBS_BROKER",
        description="Broker of the job queue; `stub`: dramatiq's in-memory broker (tests).",
    )
    retention_days: int = Field(
        default=30,
        validation_alias="OMS_RETENTION_DAYS",
        ge=1,
        description="Age past which inbox rows, sent outbox rows, failures and job runs are deleted.",
    )
    order_events_retention_days: int = Field(
        default=0,
        validation_alias="OMS_ORDER_EVENTS_RETENTION_DAYS",
        ge=0,
        description="Age (since its last change) past which a closed order's whole `order_events` chain is "
        "deleted, each recorded in `purged_order_chains`; 0: kept for good.",
    )
    reconcile_after_seconds: float = Field(
        default=300.0,
        validation_alias="OMS_RECONCILE_AFTER_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How long an order may sit in a non-final state before it is re-driven or asked about.",
    )
    statistics_every_seconds: float = Field(
        default=300.0,
        validation_alias="OMS_STATISTICS_EVERY_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How often the order statistics are refreshed.",
    )
    retention_every_seconds: float = Field(
        default=3600.0,
        validation_alias="OMS_RETENTION_EVERY_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How often old records are purged.",
    )
    reconcile_every_seconds: float = Field(
        default=60.0,
        validation_alias="OMS_RECONCILE_EVERY_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How often stuck orders are looked for.",
    )
    expiry_check_every_seconds: float = Field(
        default=300.0,
        validation_alias="OMS_EXPIRY_CHECK_EVERY_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How often DAY orders are swept for expiry, besides at each session close.",
    )
    gauges_every_seconds: float = Field(
        default=15.0,
        validation_alias="OMS_GAUGES_EVERY_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How often the jobs worker refreshes the queue and order gauges.",
    )
    check_every_seconds: float = Field(
        default=300.0,
        validation_alias="OMS_CHECK_EVERY_SECONDS",
        gt=0,
        allow_inf_nan=False,
        description="How often the invariants are checked (as `./oms check` does).",
    )
    check_window_hours: float = Field(
        default=24.0,
        validation_alias="OMS_CHECK_WINDOW_HOURS",
        gt=0,
        allow_inf_nan=False,
        description="How far back each invariant check looks.",
    )


class LoggingSettings(Section):
    """The JSON log lines and the rotation of the files `./oms up` writes them to."""

    level: str = Field(
        default="INFO", validation_alias="OMS_LOG_LEVEL", description=f"Lowest level logged: {', '.join(LOG_LEVELS)}."
    )
    max_bytes: int = Field(
        default=20 * 1024 * 1024,
        validation_alias="OMS_LOG_MAX_BYTES",
        ge=0,
        description="Size at which `./oms up` rotates a process's log file; 0: never.",
    )
    backups: int = Field(
        default=5, validation_alias="OMS_LOG_BACKUPS", ge=1, description="Rotated copies of each log file kept."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _known_level(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
            return value.strip().upper()
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")


# The connections to Postgres and RabbitMQ are switched by their URLs, each on its own: `sslmode=verify-full&
# sslrootcert=<ca>` in a database URL, `amqps://...?cafile=<ca>` for AMQP. `./oms up --tls` sets all of it.
class TlsSettings(Section):
    """TLS of the OMS's own listeners (REST, gRPC, /metrics) and the CA its clients trust (SECURITY.md, TLS)."""

    ca_file: Path | None = Field(
        default=None,
        validation_alias="OMS_TLS_CA_FILE",
        description="CA certificate (PEM) the OMS's gRPC and HTTPS clients trust: the tools, the tests, "
        "`python -m common.health`; unset: the system's trust store.",
        json_schema_extra={"default_doc": "(the system's)"},
    )
    cert_file: Path | None = Field(
        default=None,
        validation_alias="OMS_TLS_CERT_FILE",
        description="Certificate chain (PEM) the REST, gRPC and /metrics servers present when their TLS is on.",
        json_schema_extra={"default_doc": "(unset)"},
    )
    key_file: Path | None = Field(
        default=None,
        validation_alias="OMS_TLS_KEY_FILE",
        description="Private key (PEM) of `OMS_TLS_CERT_FILE`, mode 600 (a secret: never commit it).",
        json_schema_extra={"default_doc": "(unset)"},
    )
    rest: bool = Field(
        default=False,
        validation_alias="OMS_REST_TLS",
        description="Serve REST over HTTPS only (gunicorn's certfile/keyfile); `false`: plain HTTP, for loopback "
        "or behind a proxy that terminates TLS.",
    )
    grpc: bool = Field(
        default=False,
        validation_alias="OMS_GRPC_TLS",
        description="Serve gRPC over TLS only (server credentials from the certificate and key).",
    )
    metrics: bool = Field(
        default=False,
        validation_alias="OMS_METRICS_TLS",
        description="Serve each worker's /metrics and /health over HTTPS only (Prometheus then scrapes with "
        "`scheme: https` and the CA).",
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                value.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        return value

    @model_validator(mode="after")
    def _server_files(self) -> TlsSettings:
        if (self.rest or self.grpc or self.metrics) and (self.cert_file is None or self.key_file is None):
            raise ValueError(
                "OMS_REST_TLS, OMS_GRPC_TLS and OMS_METRICS_TLS need OMS_TLS_CERT_FILE and OMS_TLS_KEY_FILE"
            )
        return self


class _FlatEnvironment(PydanticBaseSettingsSource):
    """Each section's fields from their own variables (an empty variable counts as unset)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every section at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for section_name, section in SECTIONS.items():
            found: dict[str, str] = {}
            for field in section.model_fields.values():
                for name in _env_names(field):
                    value = os.environ.get(name, "")
                    if value.strip():
                        found[name] = value  # keyed by the variable: a validation error then names it
                        break
            if found:
                values[section_name] = found
        return values


class Settings(BaseSettings):
    """Every tunable of the OMS, by section. ``Settings()`` reads the environment (``load_settings`` says which
    variable is wrong); a section passed in is used as given and the others are read."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    infra: InfraSettings = Field(default_factory=InfraSettings, description="Servers, files and /metrics.")
    stage: StageSettings = Field(default_factory=StageSettings, description="Stage runtime and outbox relay.")
    api: ApiSettings = Field(default_factory=ApiSettings, description="REST and gRPC front end.")
    venue: VenueSettings = Field(default_factory=VenueSettings, description="Simulated venue.")
    risk: RiskSettings = Field(default_factory=RiskSettings, description="Risk gate: prices, Risk Analysis Service.")
    session: SessionSettings = Field(default_factory=SessionSettings, description="Trading session, settlement.")
    jobs: JobsSettings = Field(default_factory=JobsSettings, description="Background jobs and scheduler.")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logs and their rotation.")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS of the OMS's own listeners, CA.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Given values first, then the flat OMS_* variables; no .env file, no secrets folder, no nested names.
        return (init_settings, _FlatEnvironment(settings_cls))


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
}


def _describe(error: Any) -> str:
    location = [str(part) for part in error["loc"]]
    name = next((part for part in reversed(location) if part.startswith("OMS_")), ".".join(location))
    got = error.get("input")
    # The value helps find a typo; a secret is never repeated in a log.
    shown = f" (got {got!r})" if isinstance(got, str) and "SECRET" not in name else ""
    return f"{name}: {error['msg']}{shown}"


def configuration_problem(exc: ValidationError) -> str:
    """One line naming each variable that did not validate and why."""
    problems = [_describe(e) for e in exc.errors() if e["type"] != "default_factory_not_called"]
    return "invalid configuration: " + "; ".join(problems)


def load_settings() -> Settings:
    """The settings from the environment; a bad value raises ``ConfigurationError`` naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(configuration_problem(exc)) from None
