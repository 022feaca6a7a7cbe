"""The local Postgres: the cluster (initdb), pg_ctl, its server parameters, who may log in, the roles.

The roles (least privilege; migration 0008 grants each its rights, table by table):

- ``oms``: owns the database and the schema; migrations and the tools connect as it (``OMS_DATABASE_URL``);
- ``oms_worker``: the processes (stages, relay, jobs, venue, API): reads and writes the rows they need, never
  updates or deletes ``order_events`` (``OMS_WORKER_DATABASE_URL``);
- ``oms_reader``: SELECT only (``OMS_READ_DATABASE_URL``: ``./oms audit verify``);
- ``oms_retention``: the retention job's deletes, closed orders' event chains included
  (``OMS_RETENTION_DATABASE_URL``).

The last three log in with passwords made at first start, for this machine's development only: each in a file
of its own under the data folder (mode 600, never in the repository), set again on the role at every start so
the file and the role agree. Their names are settings (``OMS_DB_WORKER_ROLE`` ...).

Also makes and drops databases on a Postgres server (the local one or a container): the tests and the bench
take one each.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from tools.infra import tls
from tools.infra.settings import (
    HOST,
    PG_DATABASE,
    PG_PASSWORD,
    PG_USER,
    InfraError,
    ServerSettings,
    ServerStatus,
    check_name,
    with_path,
)
from tools.infra.system import (
    apt_install,
    as_user,
    is_root,
    port_open,
    prepare_dir,
    print_progress,
    run,
    tail,
    user_exists,
    wait_until,
)

PG_SUPERUSER = "postgres"
# Who may log in to the local Postgres, and how (written at every start, so a cluster made when the socket was
# `trust` is fixed too). The socket: only its owner reaches it (a 0700 folder), and peer authentication maps
# the OS user to a role through PG_IDENT_MAP; TCP: passwords only, so the superuser, which has none, cannot
# log in there at all.
PG_IDENT_MAP = "oms"
PG_HBA = f"""# Written by tools/infra/postgres.py at every start; change it there.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  peer map={PG_IDENT_MAP}
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
local   replication  all                  peer map={PG_IDENT_MAP}
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""
# With TLS on (`./oms infra start --tls`): TCP over TLS only. A plaintext TCP client meets a `reject` line
# first, whatever its login, and is refused before it may try a password; the socket stays as above.
PG_HBA_TLS = f"""# Written by tools/infra/postgres.py at every start (TLS on); change it there.
# TYPE     DATABASE     USER  ADDRESS        METHOD
local      all          all                  peer map={PG_IDENT_MAP}
hostnossl  all          all   0.0.0.0/0      reject
hostnossl  all          all   ::/0           reject
hostssl    all          all   127.0.0.1/32   scram-sha-256
hostssl    all          all   ::1/128        scram-sha-256
local      replication  all                  peer map={PG_IDENT_MAP}
hostnossl  replication  all   0.0.0.0/0      reject
hostnossl  replication  all   ::/0           reject
hostssl    replication  all   127.0.0.1/32   scram-sha-256
hostssl    replication  all   ::1/128        scram-sha-256
"""
PG_SOCKET_MODE = 0o700


def binary(name: str, *, install: bool) -> str:
    """The path of the Postgres program ``name``; with ``install``, apt-get installs the server when missing."""
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
    apt_install("postgresql", "the Postgres server is not installed")
    return binary(name, install=False)


def _owner() -> str | None:
    return PG_SUPERUSER if is_root() else None


def pg_ctl(
    settings: ServerSettings, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``pg_ctl -D <the cluster> *args``, as the cluster's owner."""
    cmd = [binary("pg_ctl", install=False), "-D", str(settings.pg_data), *args]
    return run(as_user(PG_SUPERUSER, cmd), check=check, timeout=timeout)


def running(settings: ServerSettings) -> bool:
    """Whether the cluster's server process runs (pg_ctl status), answering or not."""
    if not (settings.pg_data / "PG_VERSION").exists():
        return False
    return pg_ctl(settings, "status", check=False).returncode == 0


def connection(conninfo: str, **kwargs: Any) -> Any:
    """An autocommit psycopg connection."""
    import psycopg

    return psycopg.connect(conninfo, connect_timeout=3, autocommit=True, **kwargs)


def answers(settings: ServerSettings) -> bool:
    """Whether the ``oms`` role logs in over TCP, with its password."""
    try:
        with connection(libpq_url(settings.urls.database_url)) as conn:
            conn.execute("select 1")
    except Exception:
        return False
    return True


def superuser_connection(settings: ServerSettings) -> Any:
    """The superuser's connection, over the socket."""
    # By peer authentication: the superuser has no password (TCP logins need one), and only the cluster's OS
    # owner and root reach the socket and map to it (PG_HBA, _ident).
    return connection("", host=str(settings.pg_socket_dir), port=settings.pg_port, user=PG_SUPERUSER, dbname="postgres")


def superuser_answers(settings: ServerSettings) -> bool:
    """Whether the superuser logs in over the socket."""
    try:
        with superuser_connection(settings) as conn:
            conn.execute("select 1")
    except Exception:
        return False
    return True


def _ident() -> str:
    """pg_ident.conf: the OS users that may be the superuser over the socket, and everyone as themselves."""
    lines = ["# Written by tools/infra/postgres.py at every start; change it there.", "# MAP  OS-USER  ROLE"]
    # The cluster's owner: the postgres user when we run as root, else whoever runs the tools.
    owners = [PG_SUPERUSER, "root"] if is_root() else [pwd.getpwuid(os.geteuid()).pw_name]
    lines += [f"{PG_IDENT_MAP}  {owner}  {PG_SUPERUSER}" for owner in owners]
    lines.append(f"{PG_IDENT_MAP}  /^(.*)$  \\1")
    return "\n".join(lines) + "\n"


def _replace_owned(path: Path, text: str, owner: str | None) -> None:
    """Write ``path`` whole (mode 600) or not at all: the server may re-read it at any moment."""
    temporary = path.with_name(path.name + ".oms-new")
    temporary.write_text(text)
    temporary.chmod(0o600)
    if owner and is_root():
        shutil.chown(temporary, owner, owner)
    os.replace(temporary, path)


def _secure_socket_dir(settings: ServerSettings) -> None:
    """The socket's folder: its owner's alone, whatever unix_socket_permissions the server runs with."""
    folder = settings.pg_socket_dir
    prepare_dir(folder, _owner())
    folder.chmod(PG_SOCKET_MODE)


def _configure_auth(settings: ServerSettings, *, running: bool) -> None:
    """Write pg_hba.conf / pg_ident.conf as PG_HBA (PG_HBA_TLS) says; a running server reloads them (never
    restarts).

    Before the reload the new files are checked by the server itself (pg_hba_file_rules), over the
    connection the old rules allow, and put back if it finds an error: a broken file would lock us out.
    """
    _secure_socket_dir(settings)
    hba = PG_HBA_TLS if settings.tls else PG_HBA
    files = {settings.pg_data / "pg_hba.conf": hba, settings.pg_data / "pg_ident.conf": _ident()}
    old = {path: path.read_text() if path.exists() else None for path in files}
    if all(old[path] == text for path, text in files.items()):
        return
    for path, text in files.items():
        _replace_owned(path, text, _owner())
    if not running:
        return
    tcp = "TCP over TLS only, by password" if settings.tls else "TCP by password"
    print_progress(f"infra: postgres: socket logins by peer authentication only, {tcp}; reloading")
    try:
        with superuser_connection(settings) as conn:
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
                _replace_owned(path, previous, _owner())
        raise


def _init(settings: ServerSettings) -> None:
    if is_root() and not user_exists(PG_SUPERUSER):
        raise InfraError(f"user {PG_SUPERUSER!r} is missing; `apt-get install -y postgresql` creates it")
    prepare_dir(settings.pg_dir, _owner())
    if (settings.pg_data / "PG_VERSION").exists():
        return
    print_progress(f"infra: creating the Postgres cluster in {settings.pg_data}")
    initdb = binary("initdb", install=False)
    cmd = [
        initdb,
        "-D",
        str(settings.pg_data),
        "-U",
        PG_SUPERUSER,
        "-E",
        "UTF8",
        "--no-locale",
        # Replaced with PG_HBA before the first start (_configure_auth).
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
    ]
    run(as_user(PG_SUPERUSER, cmd), timeout=300)


def _bootstrap(settings: ServerSettings) -> None:
    """Create the ``oms`` role and database when missing (every start: cheap, and repairs a wiped role)."""
    import psycopg
    from psycopg import sql

    try:
        _create_role_and_database(settings, sql)
    except psycopg.Error as exc:
        raise InfraError(f"postgres: could not create the {PG_USER} role/database: {exc}") from exc


def _create_role_and_database(settings: ServerSettings, sql: Any) -> None:
    with superuser_connection(settings) as conn:
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
        for role in role_names().values():
            _ensure_login_role(conn, sql, role, _role_password(settings, role))
        # The owner is the operator's login: it may end the workers' sessions (a database restart as the tests
        # and the runbook stage one, the force of `drop database`), which Postgres allows only a member of the
        # session's role or of pg_signal_backend.
        conn.execute(sql.SQL("grant pg_signal_backend to {}").format(sql.Identifier(PG_USER)))


# ---- the least-privilege roles ------------------------------------------------------------------------------

WORKER, READER, RETENTION = "worker", "reader", "retention"


def role_names() -> dict[str, str]:
    """The roles' names by kind (worker, reader, retention), from the settings."""
    from common.settings import load_settings

    infra = load_settings().infra
    return {WORKER: infra.worker_role, READER: infra.reader_role, RETENTION: infra.retention_role}


def _password_file(settings: ServerSettings, role: str) -> Path:
    return settings.data_dir / f"pg-{role}.password"


def _role_password(settings: ServerSettings, role: str) -> str:
    """The role's local password: read from its file, made (mode 600) at first use."""
    path = _password_file(settings, role)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)  # URL-safe: it goes into the URLs as it is
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    return password


def _ensure_login_role(conn: Any, sql: Any, role: str, password: str) -> None:
    """The role exists, logs in with ``password``, and has no power beyond what migration 0008 grants it."""
    verb = "alter" if conn.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone() else "create"
    conn.execute(
        sql.SQL(
            "{} role {} login nosuperuser nocreatedb nocreaterole noinherit noreplication nobypassrls password {}"
        ).format(sql.SQL(verb), sql.Identifier(role), sql.Literal(password))
    )


def role_url(kind: str, database_url: str | None = None) -> str | None:
    """``database_url`` (default: the local ``oms`` database) as the ``kind`` role (worker, reader, retention)
    logs in to it; None unless it is a database of the local server whose role this module made."""
    settings = ServerSettings.from_env()
    url = database_url or settings.urls.database_url
    role = role_names()[kind]
    path = _password_file(settings, role)
    if not path.exists() or not _is_local_server(settings, url):
        return None
    parts = urlsplit(url)
    netloc = f"{quote(role, safe='')}:{quote(path.read_text().strip(), safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def prepare_venue_tables(database_url: str, worker_role: str | None = None) -> None:
    """Create the venue simulator's journal tables as the owner (``database_url``), and let the workers' role
    use them: the venue runs as that role, which may create nothing (services/venue_sim/journal.py)."""
    from psycopg import sql

    from services.venue_sim.journal import TABLES, create_tables

    role = worker_role or role_names()[WORKER]
    with connection(libpq_url(database_url)) as conn:
        create_tables(conn)
        if conn.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone():
            tables = sql.SQL(", ").join(sql.Identifier(table) for table in TABLES)
            conn.execute(
                sql.SQL("grant select, insert, update, delete on {} to {}").format(tables, sql.Identifier(role))
            )
            conn.execute(
                sql.SQL("grant usage on sequence venue_sim_outbox_position_seq to {}").format(sql.Identifier(role))
            )


def _install_tls(settings: ServerSettings) -> tuple[tls.TlsFiles, bool]:
    """The server's own copy of the instance's certificate and key (owned by it, mode 600, as Postgres wants
    the key); True when it changed (renewed)."""
    return tls.install(tls.files(settings.data_dir), settings.pg_dir / "tls", _owner())


def _ssl_on(settings: ServerSettings) -> bool:
    """Whether the running server has TLS on (``SHOW ssl``, over the socket)."""
    with superuser_connection(settings) as conn:
        return bool(conn.execute("show ssl").fetchone()[0] == "on")


def start(settings: ServerSettings) -> str:
    """Start the local Postgres unless it runs (its login rules and the ``oms`` role made sure of either way);
    with ``settings.tls``, TLS on and plaintext TCP refused (PG_HBA_TLS)."""
    binary("pg_ctl", install=True)
    _init(settings)
    certificate, renewed = _install_tls(settings) if settings.tls else (None, False)
    if running(settings):
        wait_until(
            lambda: superuser_answers(settings),
            what="postgres is running but does not answer on its socket (started with another OMS_PG_PORT? "
            "`./oms infra stop` first)",
            deadline=time.monotonic() + min(settings.timeout, 30),
            log=settings.pg_log,
        )
        if _ssl_on(settings) != settings.tls:
            raise InfraError(
                f"postgres runs {'without' if settings.tls else 'with'} TLS, and this start asks for it "
                f"{'on' if settings.tls else 'off'}: `./oms infra stop` first (TLS is set when a server starts)"
            )
        if renewed:
            with superuser_connection(settings) as conn:
                conn.execute("select pg_reload_conf()")  # a renewed certificate: Postgres re-reads it on reload
        _configure_auth(settings, running=True)
        # The reload is a signal: wait until the new rules let us in again.
        wait_until(
            lambda: superuser_answers(settings),
            what="postgres (superuser over the socket, after the reload)",
            deadline=time.monotonic() + min(settings.timeout, 30),
            log=settings.pg_log,
        )
        _bootstrap(settings)
        return "already running"
    if port_open(settings.pg_port):
        raise InfraError(
            f"postgres: port {settings.pg_port} is taken by another program; set OMS_PG_PORT to a free port"
        )
    _configure_auth(settings, running=False)
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
    if certificate is not None:
        options += f" -c ssl=on -c ssl_cert_file={certificate.server_cert} -c ssl_key_file={certificate.server_key}"
    log = settings.pg_log
    if is_root() and log.exists():
        shutil.chown(log, PG_SUPERUSER, PG_SUPERUSER)
    result = pg_ctl(
        settings, "start", "-w", "-t", str(int(settings.timeout)), "-l", str(log), "-o", options, check=False
    )
    if result.returncode != 0:
        raise InfraError(
            f"postgres did not start (pg_ctl exit {result.returncode}): {result.stdout.strip()}\n"
            f"  log: {log}\n{tail(log)}"
        )
    wait_until(
        lambda: superuser_answers(settings),
        what="postgres",
        deadline=started + settings.timeout,
        log=log,
        failed=lambda: None if running(settings) else "the server exited",
    )
    _bootstrap(settings)
    wait_until(
        lambda: answers(settings),
        what="postgres (oms login)",
        deadline=started + settings.timeout,
        log=log,
    )
    return f"started in {time.monotonic() - started:.1f}s"


def stop(settings: ServerSettings) -> str:
    """Stop the local Postgres (fast shutdown) if it runs."""
    if not running(settings):
        return "not running"
    pg_ctl(settings, "stop", "-m", "fast", "-w", "-t", str(int(settings.timeout)))
    return "stopped"


def status(settings: ServerSettings) -> ServerStatus:
    """The local Postgres's state: running and answering, running only, or stopped."""
    is_running = running(settings)
    answering = is_running and answers(settings)
    state = "running" if answering else "running, not answering" if is_running else "stopped"
    return ServerStatus(
        "postgres",
        answering,
        f"{state}; data {settings.pg_data}; log {settings.pg_log}",
    )


def libpq_url(url: str) -> str:
    """SQLAlchemy's ``postgresql+psycopg://`` URL as libpq wants it."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def create_database(name: str, server_url: str | None = None) -> str:
    """Create database ``name`` on the server of ``server_url`` (default: the local one); return its URL."""
    from psycopg import sql

    check_name(name)
    server_url = server_url or ServerSettings.from_env().urls.database_url
    with connection(libpq_url(server_url)) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return with_path(server_url, "/" + name)


def _is_local_server(settings: ServerSettings, server_url: str) -> bool:
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

    check_name(name)
    settings = ServerSettings.from_env()
    server_url = server_url or settings.urls.database_url
    statement = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
    if _is_local_server(settings, server_url):
        with superuser_connection(settings) as conn:
            conn.execute(statement)
        return
    with connection(libpq_url(server_url)) as conn:
        conn.execute(statement)
