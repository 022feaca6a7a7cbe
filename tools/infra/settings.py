"""Where the local servers live and answer: ports, folders, logins and URLs, read from the environment."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PG_USER, PG_PASSWORD, PG_DATABASE = "oms", "oms", "oms"
RABBIT_USER, RABBIT_PASSWORD = "guest", "guest"
# A unix socket path longer than this (sun_path is 108 bytes) cannot be bound.
MAX_SOCKET_PATH = 100
# TLS (tools/infra/tls.py): the instance's certificates live in <data dir>/tls; the marker says TLS is on.
TLS_FOLDER, TLS_CA_FILE, TLS_ENABLED_FILE = "tls", "ca.pem", "enabled"


def tls_folder(data_dir: Path) -> Path:
    """Where the instance of ``data_dir`` keeps its CA and server certificate (tools/infra/tls.py)."""
    return data_dir / TLS_FOLDER


class InfraError(RuntimeError):
    """A server could not be installed, started, stopped or reached; the message says what to look at."""


@dataclass(frozen=True)
class InfraUrls:
    """Where the servers answer."""

    database_url: str
    amqp_url: str
    management_url: str
    # A cluster's nodes as ``host:port,...`` (``OMS_AMQP_NODES`` of its processes); empty: one node.
    amqp_nodes: str = ""


@dataclass(frozen=True)
class ServerStatus:
    """One server's state as ``status()`` reports it."""

    name: str
    running: bool
    detail: str


@dataclass(frozen=True)
class ServerSettings:
    """Ports and folders, read from the environment each time (tests may change it)."""

    data_dir: Path
    pg_port: int
    amqp_port: int
    management_port: int
    dist_port: int
    nodename: str
    timeout: float
    # Where the processes of this instance keep the broker users' passwords; None: ``data_dir / "secrets"``.
    # A node of a test's own that serves the machine's processes (a sandbox) takes the machine's folder.
    secrets_dir: Path | None = None
    # The servers run with TLS only (`./oms infra start --tls`, remembered in the data folder), and ``urls``
    # name them so: sslmode=verify-full, amqps, https, each trusting the instance's CA.
    tls: bool = False
    # A node of a local cluster (tools/infra/rabbit_cluster.py): its folder under ``data_dir`` and the names of
    # every node of its cluster (its peers for classic-config discovery); a standalone node has none.
    rabbit_dir_name: str = "rabbitmq"
    rabbit_peers: tuple[str, ...] = ()
    # The local node's Erlang schedulers (``+S``): ``default_rabbit_schedulers`` unless OMS_RABBITMQ_SCHEDULERS
    # gives a count; 0: Erlang's default, one per core.
    rabbit_schedulers: int = 0

    @classmethod
    def from_env(cls) -> ServerSettings:
        env = os.environ
        data_dir = _data_dir(env.get("OMS_DATA_DIR"))
        return cls(
            data_dir=data_dir,
            pg_port=_env_number("OMS_PG_PORT", 54329),
            amqp_port=_env_number("OMS_AMQP_PORT", 56729),
            management_port=_env_number("OMS_RABBITMQ_MGMT_PORT", 15679),
            dist_port=_env_number("OMS_RABBITMQ_DIST_PORT", 25679),
            nodename=env.get("OMS_RABBITMQ_NODENAME", "oms-rabbit@localhost"),
            timeout=float(_env_number("OMS_INFRA_TIMEOUT", 120)),
            tls=(tls_folder(data_dir) / TLS_ENABLED_FILE).exists(),
            rabbit_schedulers=_env_number("OMS_RABBITMQ_SCHEDULERS", default_rabbit_schedulers()),
        )

    @property
    def urls(self) -> InfraUrls:
        database = f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@{HOST}:{self.pg_port}/{PG_DATABASE}"
        amqp = f"amqp://{RABBIT_USER}:{RABBIT_PASSWORD}@{HOST}:{self.amqp_port}/"
        if not self.tls:
            return InfraUrls(database, amqp, f"http://{HOST}:{self.management_port}/")
        # libpq checks the certificate against the CA and the host name (verify-full); aiormq takes the CA from
        # the URL's cafile. Every URL built from these (with_path, with_login, role URLs) keeps the query.
        ca = quote(str(tls_folder(self.data_dir) / TLS_CA_FILE), safe="/")
        return InfraUrls(
            database_url=f"{database}?sslmode=verify-full&sslrootcert={ca}",
            amqp_url=f"amqps{amqp.removeprefix('amqp')}?cafile={ca}",
            management_url=f"https://{HOST}:{self.management_port}/",
        )

    # Postgres layout
    @property
    def pg_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_log(self) -> Path:
        return self.pg_dir / "postgres.log"

    @property
    def pg_socket_dir(self) -> Path:
        preferred = self.pg_dir / "run"
        if len(str(preferred)) + len(f"/.s.PGSQL.{self.pg_port}") <= MAX_SOCKET_PATH:
            return preferred
        # A deep checkout would overflow sun_path; fall back to a short per-data-folder path.
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]
        # B108: a fixed name in /tmp for the local dev server only; postgres.py makes it the server user's,
        # mode 0700, before the server starts (a folder pre-made by another user fails the chmod, as non-root).
        return Path("/tmp") / f"oms-pg-{digest}"  # nosec B108

    # RabbitMQ layout
    @property
    def rabbit_dir(self) -> Path:
        return self.data_dir / self.rabbit_dir_name

    @property
    def rabbit_log(self) -> Path:
        return self.rabbit_dir / "log" / f"{self.nodename}.log"

    @property
    def rabbit_stdout(self) -> Path:
        return self.rabbit_dir / "log" / "startup.log"

    @property
    def rabbit_pid_file(self) -> Path:
        return self.rabbit_dir / "rabbitmq.pid"


def default_rabbit_schedulers() -> int:
    """Half the cores this process may use, at least one: the local node shares them with Postgres and the OMS.

    Erlang starts a scheduler per core. On two cores, one scheduler took 36-42% off the broker's CPU per order in
    bursts and 13-20% at a steady rate (docs/design.md, Sessions 13 and 14): with two, the work of one message
    (channel, queue, Raft WAL, consumer's channel) crosses between scheduler threads, each crossing a wake-up.
    """
    return max(1, usable_cores() // 2)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a cpuset or ``taskset`` leaves it), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def _env_number(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit():
        raise InfraError(f"{name}={value!r} is not a whole number")
    return int(value)


def _data_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit).resolve()
    default = ROOT / ".data"
    if os.geteuid() != 0 or _others_can_traverse(ROOT):
        return default
    # The servers run as their own users (postgres, rabbitmq); they cannot reach a checkout under a private
    # folder such as /root, so keep the data in a folder they can reach.
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
    # B108: the local dev servers' data when root runs a checkout the service users cannot reach (a private
    # home): tools/infra runs local development and CI servers only, never a deployment's.
    return Path("/var/tmp") / f"oms-data-{digest}"  # nosec B108


def _others_can_traverse(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


def with_path(url: str, path: str) -> str:
    """``url`` with its path replaced: a database or a vhost on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def check_name(name: str) -> None:
    """Refuse a database or vhost name that would need quoting anywhere (ValueError)."""
    if not name or not name.replace("_", "").isalnum() or not name.isascii() or len(name) > 63:
        raise ValueError(f"not a safe database/vhost name: {name!r} (letters, digits and _ only)")
