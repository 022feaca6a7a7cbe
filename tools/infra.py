"""Local Postgres and RabbitMQ servers for development and tests (``./oms infra start|stop|status``).

The servers run as plain processes with their data under ``.data/`` (``OMS_DATA_DIR``), so no Docker engine
is needed; with ``--docker`` (or ``OMS_INFRA=docker``) and a Docker engine answering, docker compose runs
them instead, on the same ports. Other code uses :func:`ensure_started`, :func:`stop`, :func:`status`,
:func:`create_database` / :func:`drop_database` and :func:`create_vhost` / :func:`delete_vhost`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PG_USER, PG_PASSWORD, PG_DATABASE = "oms", "oms", "oms"
PG_SUPERUSER = "postgres"
RABBIT_USER, RABBIT_PASSWORD = "guest", "guest"
DEFINITIONS_FILE = ROOT / "ops" / "rabbitmq-definitions.json"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# A unix socket path longer than this (sun_path is 108 bytes) cannot be bound.
MAX_SOCKET_PATH = 100
# Who may log in to the local Postgres, and how (written at every start, so a cluster made when the socket was
# `trust` is fixed too). The socket: only its owner reaches it (a 0700 folder), and peer authentication maps
# the OS user to a role through PG_IDENT_MAP; TCP: passwords only, so the superuser, which has none, cannot
# log in there at all.
PG_IDENT_MAP = "oms"
PG_HBA = f"""# Written by tools/infra.py at every start; change it there.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  peer map={PG_IDENT_MAP}
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
local   replication  all                  peer map={PG_IDENT_MAP}
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""
PG_SOCKET_MODE = 0o700


class InfraError(RuntimeError):
    """A server could not be installed, started, stopped or reached; the message says what to look at."""


@dataclass(frozen=True)
class InfraUrls:
    """Where the servers answer."""

    database_url: str
    amqp_url: str
    management_url: str


@dataclass(frozen=True)
class ServerStatus:
    """One server's state as ``status()`` reports it."""

    name: str
    running: bool
    detail: str


@dataclass(frozen=True)
class Settings:
    """Ports and folders, read from the environment each time (tests may change it)."""

    data_dir: Path
    pg_port: int
    amqp_port: int
    management_port: int
    dist_port: int
    nodename: str
    timeout: float

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            data_dir=_data_dir(env.get("OMS_DATA_DIR")),
            pg_port=_env_number("OMS_PG_PORT", 54329),
            amqp_port=_env_number("OMS_AMQP_PORT", 56729),
            management_port=_env_number("OMS_RABBITMQ_MGMT_PORT", 15679),
            dist_port=_env_number("OMS_RABBITMQ_DIST_PORT", 25679),
            nodename=env.get("OMS_RABBITMQ_NODENAME", "oms-rabbit@localhost"),
            timeout=float(_env_number("OMS_INFRA_TIMEOUT", 120)),
        )

    @property
    def urls(self) -> InfraUrls:
        return InfraUrls(
            database_url=f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@{HOST}:{self.pg_port}/{PG_DATABASE}",
            amqp_url=f"amqp://{RABBIT_USER}:{RABBIT_PASSWORD}@{HOST}:{self.amqp_port}/",
            management_url=f"http://{HOST}:{self.management_port}/",
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
        return Path("/tmp") / f"oms-pg-{digest}"

    # RabbitMQ layout
    @property
    def rabbit_dir(self) -> Path:
        return self.data_dir / "rabbitmq"

    @property
    def rabbit_log(self) -> Path:
        return self.rabbit_dir / "log" / f"{self.nodename}.log"

    @property
    def rabbit_stdout(self) -> Path:
        return self.rabbit_dir / "log" / "startup.log"

    @property
    def rabbit_pid_file(self) -> Path:
        return self.rabbit_dir / "rabbitmq.pid"


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
    return Path("/var/tmp") / f"oms-data-{digest}"


def _others_can_traverse(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


# --------------------------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    # stdout, flushed: progress lines must stay in order with the summary that follows them.
    print(message, flush=True)


def _is_root() -> bool:
    return os.geteuid() == 0


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _as_user(user: str, cmd: Sequence[str]) -> list[str]:
    """Run ``cmd`` as ``user`` when we are root (servers refuse root); as ourselves otherwise."""
    if not _is_root():
        return list(cmd)
    return ["runuser", "-u", user, "--", *cmd]


def _run(
    cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(cmd),
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from exc
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise InfraError(f"command failed (exit {result.returncode}): {' '.join(cmd)}\n{output}")
    return result


def _prepare_dir(path: Path, owner: str | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if owner and _is_root():
        shutil.chown(path, owner, owner)


def _write_owned(path: Path, text: str, owner: str | None) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    if owner and _is_root():
        shutil.chown(path, owner, owner)


def _port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid_file: Path, program: str) -> int | None:
    """The pid in ``pid_file`` when that process is alive and runs ``program``, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        proc = Path("/proc") / str(pid)
        # A zombie still "exists" for kill(pid, 0) and machines without an init never reap it; a stale pid
        # file may name a process that reused the pid. /proc tells both apart.
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if state != "Z" and program.encode() in cmdline else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    deadline: float,
    log: Path,
    failed: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll ``ready`` until it holds; stop early when ``failed`` names a reason, else at the deadline."""
    interval = 0.1
    while True:
        if ready():
            return
        reason = failed()
        if reason is None and time.monotonic() >= deadline:
            reason = "not ready before the deadline (OMS_INFRA_TIMEOUT)"
        if reason is not None:
            raise InfraError(f"{what}: {reason}\n  log: {log}\n{_tail(log)}")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


def _apt_install(package: str, why: str) -> None:
    if not _is_root() or not shutil.which("apt-get"):
        raise InfraError(f"{why}: install it first, e.g. `sudo apt-get install -y {package}`")
    _log(f"infra: {why}; installing {package} with apt-get (about a minute)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], env=env, timeout=600)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=env, timeout=900)


@contextlib.contextmanager
def _lock(settings: Settings) -> Iterator[None]:
    """Serialise start/stop between processes (parallel test runs, two terminals)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if _is_root():
        # The service users only need to traverse the data folder, never to write to it.
        settings.data_dir.chmod(0o755)
    with open(settings.data_dir / ".infra.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -------------------------------------------------------------------------------------------- Postgres


def _pg_bin(name: str, *, install: bool) -> str:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the server binaries off the PATH, under /usr/lib/postgresql/<major>/bin.
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    if not install:
        raise InfraError(f"{name} not found: the Postgres server is not installed")
    _apt_install("postgresql", "the Postgres server is not installed")
    return _pg_bin(name, install=False)


def _pg_owner() -> str | None:
    return PG_SUPERUSER if _is_root() else None


def _pg_ctl(
    settings: Settings, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    cmd = [_pg_bin("pg_ctl", install=False), "-D", str(settings.pg_data), *args]
    return _run(_as_user(PG_SUPERUSER, cmd), check=check, timeout=timeout)


def _pg_running(settings: Settings) -> bool:
    if not (settings.pg_data / "PG_VERSION").exists():
        return False
    return _pg_ctl(settings, "status", check=False).returncode == 0


def _pg_connect(conninfo: str, **kwargs: Any) -> Any:
    import psycopg

    return psycopg.connect(conninfo, connect_timeout=3, autocommit=True, **kwargs)


def _pg_answers(settings: Settings) -> bool:
    try:
        with _pg_connect(_libpq_url(settings.urls.database_url)) as conn:
            conn.execute("select 1")
    except Exception:
        return False
    return True


def _pg_superuser_conn(settings: Settings) -> Any:
    # Over the socket, by peer authentication: the superuser has no password (TCP logins need one), and only
    # the cluster's OS owner and root reach the socket and map to it (PG_HBA, _pg_ident).
    return _pg_connect(
        "", host=str(settings.pg_socket_dir), port=settings.pg_port, user=PG_SUPERUSER, dbname="postgres"
    )


def _pg_ident() -> str:
    """pg_ident.conf: the OS users that may be the superuser over the socket, and everyone as themselves."""
    lines = ["# Written by tools/infra.py at every start; change it there.", "# MAP  OS-USER  ROLE"]
    # The cluster's owner: the postgres user when we run as root, else whoever runs the tools.
    owners = [PG_SUPERUSER, "root"] if _is_root() else [pwd.getpwuid(os.geteuid()).pw_name]
    lines += [f"{PG_IDENT_MAP}  {owner}  {PG_SUPERUSER}" for owner in owners]
    lines.append(f"{PG_IDENT_MAP}  /^(.*)$  \\1")
    return "\n".join(lines) + "\n"


def _replace_owned(path: Path, text: str, owner: str | None) -> None:
    """Write ``path`` whole (mode 600) or not at all: the server may re-read it at any moment."""
    temporary = path.with_name(path.name + ".oms-new")
    temporary.write_text(text)
    temporary.chmod(0o600)
    if owner and _is_root():
        shutil.chown(temporary, owner, owner)
    os.replace(temporary, path)


def _pg_secure_socket_dir(settings: Settings) -> None:
    """The socket's folder: its owner's alone, whatever unix_socket_permissions the server runs with."""
    folder = settings.pg_socket_dir
    _prepare_dir(folder, _pg_owner())
    folder.chmod(PG_SOCKET_MODE)


def _pg_configure_auth(settings: Settings, *, running: bool) -> None:
    """Write pg_hba.conf / pg_ident.conf as PG_HBA says; a running server reloads them (never restarts).

    Before the reload the new files are checked by the server itself (pg_hba_file_rules), over the
    connection the old rules allow, and put back if it finds an error: a broken file would lock us out.
    """
    _pg_secure_socket_dir(settings)
    files = {settings.pg_data / "pg_hba.conf": PG_HBA, settings.pg_data / "pg_ident.conf": _pg_ident()}
    old = {path: path.read_text() if path.exists() else None for path in files}
    if all(old[path] == text for path, text in files.items()):
        return
    for path, text in files.items():
        _replace_owned(path, text, _pg_owner())
    if not running:
        return
    _log("infra: postgres: socket logins by peer authentication only, TCP by password; reloading")
    try:
        with _pg_superuser_conn(settings) as conn:
            errors = conn.execute("select line_number, error from pg_hba_file_rules where error is not null").fetchall()
            if conn.execute("select to_regclass('pg_ident_file_mappings')").fetchone()[0] is not None:
                errors += conn.execute(
                    "select line_number, error from pg_ident_file_mappings where error is not null"
                ).fetchall()
            if errors:
                raise InfraError(f"postgres: the new authentication rules do not parse: {errors}")
            conn.execute("select pg_reload_conf()")
    except Exception:
        for path, previous in old.items():
            if previous is not None:
                _replace_owned(path, previous, _pg_owner())
        raise


def _pg_init(settings: Settings) -> None:
    if _is_root() and not _user_exists(PG_SUPERUSER):
        raise InfraError(f"user {PG_SUPERUSER!r} is missing; `apt-get install -y postgresql` creates it")
    _prepare_dir(settings.pg_dir, _pg_owner())
    if (settings.pg_data / "PG_VERSION").exists():
        return
    _log(f"infra: creating the Postgres cluster in {settings.pg_data}")
    initdb = _pg_bin("initdb", install=False)
    cmd = [
        initdb,
        "-D",
        str(settings.pg_data),
        "-U",
        PG_SUPERUSER,
        "-E",
        "UTF8",
        "--no-locale",
        # Replaced with PG_HBA before the first start (_pg_configure_auth).
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
    ]
    _run(_as_user(PG_SUPERUSER, cmd), timeout=300)


def _pg_bootstrap(settings: Settings) -> None:
    """Create the ``oms`` role and database when missing (every start: cheap, and repairs a wiped role)."""
    import psycopg
    from psycopg import sql

    try:
        _pg_create_role_and_database(settings, sql)
    except psycopg.Error as exc:
        raise InfraError(f"postgres: could not create the {PG_USER} role/database: {exc}") from exc


def _pg_create_role_and_database(settings: Settings, sql: Any) -> None:
    with _pg_superuser_conn(settings) as conn:
        if not conn.execute("select 1 from pg_roles where rolname = %s", [PG_USER]).fetchone():
            # CREATEDB so the tests can make a throwaway database per session without the superuser.
            conn.execute(
                sql.SQL("create role {} login createdb password {}").format(
                    sql.Identifier(PG_USER), sql.Literal(PG_PASSWORD)
                )
            )
        if not conn.execute("select 1 from pg_database where datname = %s", [PG_DATABASE]).fetchone():
            conn.execute(
                sql.SQL("create database {} owner {}").format(sql.Identifier(PG_DATABASE), sql.Identifier(PG_USER))
            )


def _pg_start(settings: Settings) -> str:
    _pg_bin("pg_ctl", install=True)
    _pg_init(settings)
    if _pg_running(settings):
        _wait_until(
            lambda: _pg_superuser_answers(settings),
            what="postgres is running but does not answer on its socket (started with another OMS_PG_PORT? "
            "`./oms infra stop` first)",
            deadline=time.monotonic() + min(settings.timeout, 30),
            log=settings.pg_log,
        )
        _pg_configure_auth(settings, running=True)
        # The reload is a signal: wait until the new rules let us in again.
        _wait_until(
            lambda: _pg_superuser_answers(settings),
            what="postgres (superuser over the socket, after the reload)",
            deadline=time.monotonic() + min(settings.timeout, 30),
            log=settings.pg_log,
        )
        _pg_bootstrap(settings)
        return "already running"
    if _port_open(settings.pg_port):
        raise InfraError(
            f"postgres: port {settings.pg_port} is taken by another program; set OMS_PG_PORT to a free port"
        )
    _pg_configure_auth(settings, running=False)
    started = time.monotonic()
    options = (
        f"-p {settings.pg_port} -k {settings.pg_socket_dir} -c listen_addresses={HOST} "
        f"-c unix_socket_permissions=0{PG_SOCKET_MODE:o} "
        # Every worker process keeps a small pool; the default 100 is tight for the end-to-end tests.
        "-c max_connections=200 "
        # Solid-state storage: a random read costs about what a sequential one does. With the default 4 the
        # planner scans small and middling tables whole rather than look a few rows up by index.
        "-c random_page_cost=1.1 "
        # The default 128 MB holds little of the indexes an order's rows go into once there is history: every
        # insert then evicts and reads pages, and the cost per order grows with the data. 1 GB of a 24 GB machine
        # holds a million orders' hot index pages; a larger WAL between checkpoints spares a write burst.
        "-c shared_buffers=1GB -c max_wal_size=4GB"
    )
    log = settings.pg_log
    if _is_root() and log.exists():
        shutil.chown(log, PG_SUPERUSER, PG_SUPERUSER)
    result = _pg_ctl(
        settings, "start", "-w", "-t", str(int(settings.timeout)), "-l", str(log), "-o", options, check=False
    )
    if result.returncode != 0:
        raise InfraError(
            f"postgres did not start (pg_ctl exit {result.returncode}): {result.stdout.strip()}\n"
            f"  log: {log}\n{_tail(log)}"
        )
    _wait_until(
        lambda: _pg_superuser_answers(settings),
        what="postgres",
        deadline=started + settings.timeout,
        log=log,
        failed=lambda: None if _pg_running(settings) else "the server exited",
    )
    _pg_bootstrap(settings)
    _wait_until(
        lambda: _pg_answers(settings),
        what="postgres (oms login)",
        deadline=started + settings.timeout,
        log=log,
    )
    return f"started in {time.monotonic() - started:.1f}s"


def _pg_superuser_answers(settings: Settings) -> bool:
    try:
        with _pg_superuser_conn(settings) as conn:
            conn.execute("select 1")
    except Exception:
        return False
    return True


def _pg_stop(settings: Settings) -> str:
    if not _pg_running(settings):
        return "not running"
    _pg_ctl(settings, "stop", "-m", "fast", "-w", "-t", str(int(settings.timeout)))
    return "stopped"


def _pg_status(settings: Settings) -> ServerStatus:
    running = _pg_running(settings)
    answers = running and _pg_answers(settings)
    state = "running" if answers else "running, not answering" if running else "stopped"
    return ServerStatus(
        "postgres",
        answers,
        f"{state}; data {settings.pg_data}; log {settings.pg_log}",
    )


# -------------------------------------------------------------------------------------------- RabbitMQ


def _rabbit_owner() -> str | None:
    return "rabbitmq" if _is_root() else None


def _rabbit_script(name: str) -> str:
    # As root, Debian's wrappers in /usr/sbin switch to the rabbitmq user, whose home holds the Erlang
    # cookie, so the server and the CLI tools agree on it. Another user runs the real scripts directly
    # with their own cookie.
    if _is_root():
        found = shutil.which(name) or f"/usr/sbin/{name}"
    else:
        direct = Path("/usr/lib/rabbitmq/bin") / name
        found = str(direct) if direct.exists() else (shutil.which(name) or name)
    return found


def _rabbit_env(settings: Settings) -> dict[str, str]:
    base = settings.rabbit_dir
    return {
        **os.environ,
        "RABBITMQ_NODENAME": settings.nodename,
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_NODE_PORT": str(settings.amqp_port),
        "RABBITMQ_DIST_PORT": str(settings.dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(settings.rabbit_pid_file),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        # 3.10 takes the new-style (sysctl) format when the path ends in .conf.
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        # Not the machine-wide /etc/rabbitmq/rabbitmq-env.conf: this node is private to the project.
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        # Keep Erlang distribution on loopback too.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_ADDRESS": HOST,
        "ERL_CRASH_DUMP": str(base / "log" / "erl_crash.dump"),
    }


def _rabbit_config(settings: Settings) -> str:
    lines = [
        "# Written by tools/infra.py at every start; change it there.",
        f"management.tcp.ip = {HOST}",
        f"management.tcp.port = {settings.management_port}",
    ]
    if DEFINITIONS_FILE.exists():
        # The node's own copy (see _rabbit_prepare): the checkout may sit where its user cannot read.
        lines.append(f"load_definitions = {settings.rabbit_dir / DEFINITIONS_FILE.name}")
    return "\n".join(lines) + "\n"


def _rabbit_prepare(settings: Settings) -> None:
    if not shutil.which("rabbitmq-server") and not Path("/usr/sbin/rabbitmq-server").exists():
        _apt_install("rabbitmq-server", "RabbitMQ is not installed")
    owner = _rabbit_owner()
    if owner and not _user_exists(owner):
        raise InfraError("user 'rabbitmq' is missing; `apt-get install -y rabbitmq-server` creates it")
    base = settings.rabbit_dir
    for folder in (base, base / "mnesia", base / "log"):
        _prepare_dir(folder, owner)
    _write_owned(base / "enabled_plugins", "[rabbitmq_management].\n", owner)
    if DEFINITIONS_FILE.exists():
        # Copied into the node's folder at every start: a checkout in a private folder (mktemp -d, mode 0700)
        # is out of the rabbitmq user's reach, and the node refuses to start without its definitions.
        _write_owned(base / DEFINITIONS_FILE.name, DEFINITIONS_FILE.read_text(), owner)
    _write_owned(base / "rabbitmq.conf", _rabbit_config(settings), owner)


def _management_get(settings: Settings, path: str, timeout: float = 2.0) -> Any:
    import requests

    response = requests.get(
        settings.urls.management_url + path.lstrip("/"), auth=(RABBIT_USER, RABBIT_PASSWORD), timeout=timeout
    )
    response.raise_for_status()
    return response.json()


def _rabbit_node_answering(settings: Settings) -> str | None:
    """The node name the management API on our port reports, or None when nothing answers there."""
    try:
        overview = _management_get(settings, "api/overview")
    except Exception:
        return None
    return str(overview.get("node"))


def _rabbit_ready(settings: Settings) -> bool:
    return _port_open(settings.amqp_port) and _rabbit_node_answering(settings) == settings.nodename


_children: list[subprocess.Popen[bytes]] = []  # keeps the server's parent from being reaped noisily


def _rabbit_start(settings: Settings) -> str:
    _rabbit_prepare(settings)
    started = time.monotonic()
    deadline = started + settings.timeout
    if _rabbit_ready(settings):
        return "already running"
    if _pid_alive(settings.rabbit_pid_file, "beam"):
        # Booting (started by another process): wait for it rather than start a second node.
        _wait_until(lambda: _rabbit_ready(settings), what="rabbitmq", deadline=deadline, log=settings.rabbit_log)
        return "already running"
    for port, name in (
        (settings.amqp_port, "OMS_AMQP_PORT"),
        (settings.management_port, "OMS_RABBITMQ_MGMT_PORT"),
        (settings.dist_port, "OMS_RABBITMQ_DIST_PORT"),
    ):
        if _port_open(port):
            raise InfraError(f"rabbitmq: port {port} is taken by another program; set {name} to a free port")
    stdout = settings.rabbit_stdout
    with open(stdout, "wb") as out:
        # In the foreground of a child of our own (not -detached) so that an early exit is seen at once
        # instead of at the deadline; its own session keeps it alive after we exit and away from Ctrl-C.
        process = subprocess.Popen(
            [_rabbit_script("rabbitmq-server")],
            env=_rabbit_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    _children.append(process)

    def failed() -> str | None:
        code = process.poll()
        if code is None:
            return None
        return f"the server exited (code {code}); its output, {stdout}:\n{_tail(stdout)}"

    _wait_until(
        lambda: _rabbit_ready(settings),
        what="rabbitmq",
        deadline=deadline,
        log=settings.rabbit_log,
        failed=failed,
    )
    return f"started in {time.monotonic() - started:.1f}s"


def _rabbit_stop(settings: Settings) -> str:
    pid = _pid_alive(settings.rabbit_pid_file, "beam")
    if pid is None:
        return "not running"
    # `stop <pid file>` returns only once the node's OS process is gone.
    ctl = [_rabbit_script("rabbitmqctl"), "-n", settings.nodename, "stop", str(settings.rabbit_pid_file)]
    result = _run(ctl, env=_rabbit_env(settings), check=False, timeout=settings.timeout)
    if result.returncode == 0 and _pid_alive(settings.rabbit_pid_file, "beam") is None:
        return "stopped"
    # The CLI could not reach the node (a cookie mix-up, say): RabbitMQ shuts down cleanly on SIGTERM too.
    _log(f"infra: rabbitmqctl stop failed ({(result.stdout + result.stderr).strip()[:300]}); sending SIGTERM")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.timeout
    while _pid_alive(settings.rabbit_pid_file, "beam") is not None:
        if time.monotonic() >= deadline:
            raise InfraError(f"rabbitmq (pid {pid}) did not stop; log: {settings.rabbit_log}")
        time.sleep(0.2)
    return "stopped (SIGTERM)"


def _rabbit_status(settings: Settings) -> ServerStatus:
    pid = _pid_alive(settings.rabbit_pid_file, "beam")
    node = _rabbit_node_answering(settings)
    if node == settings.nodename:
        state = f"running (node {node}, pid {pid})"
    elif pid is not None:
        state = f"process {pid} alive, management API not answering"
    elif node is not None:
        state = f"stopped; another node ({node}) answers on port {settings.management_port}"
    else:
        state = "stopped"
    return ServerStatus(
        "rabbitmq",
        node == settings.nodename,
        f"{state}; data {settings.rabbit_dir}; log {settings.rabbit_log}",
    )


# ---------------------------------------------------------------------------------------------- Docker


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) is reachable."""
    if not shutil.which("docker"):
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _use_docker(docker: bool | None) -> bool:
    wanted = docker if docker is not None else os.environ.get("OMS_INFRA", "").lower() == "docker"
    if wanted and not docker_engine_answers():
        raise InfraError("--docker / OMS_INFRA=docker asked for Docker, but no Docker engine answers `docker info`")
    return wanted


def _compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return _run(["docker", "compose", "-p", "oms", "-f", str(COMPOSE_FILE), *args], timeout=timeout)


# ------------------------------------------------------------------------------------------ public API


def ensure_started(*, docker: bool | None = None, verbose: bool = False) -> InfraUrls:
    """Start Postgres and RabbitMQ unless they already run; return where they answer."""
    settings = Settings.from_env()
    if _use_docker(docker):
        _compose("up", "-d", "--wait", "postgres", "rabbitmq")
        return settings.urls
    with _lock(settings):
        pg = _pg_start(settings)
        rabbit = _rabbit_start(settings)
    if verbose:
        _log(f"postgres: {pg} (port {settings.pg_port}; log {settings.pg_log})")
        _log(f"rabbitmq: {rabbit} (node {settings.nodename}; log {settings.rabbit_log})")
    return settings.urls


def stop(*, docker: bool | None = None) -> list[str]:
    """Stop both servers (a server that is not running is fine); returns what was done."""
    settings = Settings.from_env()
    if _use_docker(docker):
        _compose("stop", "postgres", "rabbitmq")
        return ["docker compose: postgres and rabbitmq stopped"]
    with _lock(settings):
        # Both are attempted even when the first fails, so a broken Postgres does not leave RabbitMQ running.
        errors: list[str] = []
        done: list[str] = []
        for name, action in (("rabbitmq", _rabbit_stop), ("postgres", _pg_stop)):
            try:
                done.append(f"{name}: {action(settings)}")
            except InfraError as exc:
                errors.append(f"{name}: {exc}")
    if errors:
        raise InfraError("\n".join(errors))
    return done


def status(*, docker: bool | None = None) -> list[ServerStatus]:
    """Each server's state."""
    settings = Settings.from_env()
    if _use_docker(docker):
        out = _compose("ps", "postgres", "rabbitmq").stdout.strip()
        return [ServerStatus("docker compose", "running" in out.lower() or "up" in out.lower(), out)]
    return [_pg_status(settings), _rabbit_status(settings)]


def _libpq_url(url: str) -> str:
    """SQLAlchemy's ``postgresql+psycopg://`` URL as libpq wants it."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _check_name(name: str) -> None:
    if not name or not name.replace("_", "").isalnum() or not name.isascii() or len(name) > 63:
        raise ValueError(f"not a safe database/vhost name: {name!r} (letters, digits and _ only)")


def create_database(name: str, server_url: str | None = None) -> str:
    """Create database ``name`` on the server of ``server_url`` (default: the local one); return its URL."""
    from psycopg import sql

    _check_name(name)
    server_url = server_url or Settings.from_env().urls.database_url
    with _pg_connect(_libpq_url(server_url)) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return _with_path(server_url, "/" + name)


def _is_local_server(settings: Settings, server_url: str) -> bool:
    """Whether ``server_url`` names the Postgres this module runs (not, say, a container on the same port)."""
    parts = urlsplit(server_url)
    socket_file = settings.pg_socket_dir / f".s.PGSQL.{settings.pg_port}"
    return (
        parts.hostname in (HOST, "localhost")
        and (parts.port or 5432) == settings.pg_port
        and (settings.pg_data / "PG_VERSION").exists()
        and socket_file.is_socket()
    )


def drop_database(name: str, server_url: str | None = None) -> None:
    """Drop database ``name`` if it exists, closing its connections.

    On the local server as the superuser: ``with (force)`` terminates every session on the database, and only
    a superuser may terminate another role's (the owner gets "must be a member of the role whose process is
    being terminated"). Elsewhere (a container) as the URL's user, its superuser.
    """
    from psycopg import sql

    _check_name(name)
    settings = Settings.from_env()
    server_url = server_url or settings.urls.database_url
    statement = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
    if _is_local_server(settings, server_url):
        with _pg_superuser_conn(settings) as conn:
            conn.execute(statement)
        return
    with _pg_connect(_libpq_url(server_url)) as conn:
        conn.execute(statement)


def _management(management_url: str | None) -> tuple[str, tuple[str, str]]:
    parts = urlsplit(management_url or Settings.from_env().urls.management_url)
    auth = (parts.username or RABBIT_USER, parts.password or RABBIT_PASSWORD)
    netloc = parts.hostname or HOST
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/", "", ""))
    return base, auth


def create_vhost(name: str, management_url: str | None = None) -> None:
    """Create vhost ``name`` and give the management user (guest) full permissions on it."""
    import requests

    _check_name(name)
    base, auth = _management(management_url)
    vhost = quote(name, safe="")
    response = requests.put(f"{base}api/vhosts/{vhost}", auth=auth, timeout=10)
    response.raise_for_status()
    response = requests.put(
        f"{base}api/permissions/{vhost}/{quote(auth[0], safe='')}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=auth,
        timeout=10,
    )
    response.raise_for_status()


def delete_vhost(name: str, management_url: str | None = None) -> None:
    """Delete vhost ``name`` (absent is fine)."""
    import requests

    _check_name(name)
    base, auth = _management(management_url)
    response = requests.delete(f"{base}api/vhosts/{quote(name, safe='')}", auth=auth, timeout=30)
    if response.status_code != 404:
        response.raise_for_status()


def amqp_url_for_vhost(amqp_url: str, vhost: str) -> str:
    """``amqp_url`` pointed at ``vhost``."""
    return _with_path(amqp_url, "/" + quote(vhost, safe=""))


# ------------------------------------------------------------------------------------------------- CLI


def _print_urls(urls: InfraUrls) -> None:
    print(f"  database    {urls.database_url}")
    print(f"  amqp        {urls.amqp_url}")
    print(f"  management  {urls.management_url}  (login guest / guest)")


def main(argv: list[str]) -> int:
    """``oms infra start|stop|status [--docker]``."""
    parser = argparse.ArgumentParser(prog="oms infra", description="Local Postgres and RabbitMQ servers.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--docker", action="store_true", default=None, help="use docker compose (needs a Docker engine)"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.action == "start":
            urls = ensure_started(docker=args.docker, verbose=True)
            print(f"servers are up (data in {settings.data_dir}):")
            _print_urls(urls)
        elif args.action == "stop":
            for line in stop(docker=args.docker):
                print(line)
        else:
            states = status(docker=args.docker)
            for state in states:
                print(f"{state.name}: {state.detail}")
            _print_urls(settings.urls)
            return 0 if all(s.running for s in states) else 3
    except InfraError as exc:
        print(f"oms infra {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def run_tests(argv: list[str]) -> int:
    """``oms test [pytest args]``: start the servers, then run pytest against them; pytest's exit code."""
    env = dict(os.environ)
    if not (env.get("OMS_TEST_DATABASE_URL") and env.get("OMS_TEST_AMQP_URL")):
        try:
            urls = ensure_started()
        except InfraError as exc:
            print(f"oms test: {exc}", file=sys.stderr)
            return 1
        # Point the tests at the servers just ensured, whatever else (a Docker engine) the machine offers.
        env.update(
            OMS_TEST_DATABASE_URL=urls.database_url,
            OMS_TEST_AMQP_URL=urls.amqp_url,
            OMS_TEST_MANAGEMENT_URL=urls.management_url,
        )
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
