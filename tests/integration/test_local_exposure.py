"""Local exposure: the local Postgres lets no other OS user in, and every listener binds loopback by default.

The Postgres checks run as the OS user ``nobody`` through ``runuser``, so they need root and the servers that
``tools.infra`` runs (skipped otherwise).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from common.health import serve_process_endpoints
from common.settings import ApiSettings, Settings
from tools import infra
from tools.infra import postgres, system
from tools.infra.settings import HOST

if TYPE_CHECKING:
    from tools.infra import InfraUrls

ROOT = Path(__file__).resolve().parents[2]


def _needs_root_and_psql() -> None:
    if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("psql"):
        pytest.skip("needs root, runuser and psql to try the server as another OS user")


@pytest.fixture()
def local(infra_urls: InfraUrls) -> infra.ServerSettings:
    """The settings of the Postgres that tools.infra runs, when it is the one this session uses."""
    _needs_root_and_psql()
    settings = infra.ServerSettings.from_env()
    if infra_urls.database_url != settings.urls.database_url:
        pytest.skip("this session's servers are not the local ones that tools.infra manages")
    return settings


def _psql_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", "psql", "-w", *args, "-c", "select 1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "PGCONNECT_TIMEOUT": "5"},
        cwd="/",
    )


def _assert_nobody_is_refused(settings: infra.ServerSettings) -> None:
    over_socket = _psql_as_nobody("-h", str(settings.pg_socket_dir), "-p", str(settings.pg_port), "-U", "postgres")
    assert over_socket.returncode != 0, over_socket.stdout
    assert "Permission denied" in over_socket.stderr or "authentication failed" in over_socket.stderr
    over_tcp = _psql_as_nobody("-h", HOST, "-p", str(settings.pg_port), "-U", "postgres", "postgres")
    assert over_tcp.returncode != 0, over_tcp.stdout
    assert "password" in over_tcp.stderr


def _assert_locked_down(settings: infra.ServerSettings) -> None:
    rules = (settings.pg_data / "pg_hba.conf").read_text().splitlines()
    assert not [line for line in rules if line.split() and not line.startswith("#") and "trust" in line.split()]
    assert stat.S_IMODE(settings.pg_socket_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((settings.pg_data / "pg_hba.conf").stat().st_mode) == 0o600


# ---- Postgres ---------------------------------------------------------------------------------------------


def test_nobody_cannot_log_in_to_the_local_postgres(local: infra.ServerSettings) -> None:
    _assert_locked_down(local)
    _assert_nobody_is_refused(local)


def test_the_tools_still_reach_the_server(local: infra.ServerSettings) -> None:
    assert postgres.answers(local)  # the oms role, over TCP with its password
    with postgres.superuser_connection(local) as conn:  # the superuser, over the socket by peer authentication
        assert conn.execute("select current_user").fetchone() == ("postgres",)


def test_drop_database_ends_sessions_of_other_roles(local: infra.ServerSettings) -> None:
    name = f"oms_drop_{os.getpid()}"
    infra.create_database(name, local.urls.database_url)
    # A session of another role (the superuser) on the database: the owner alone may not end it.
    other = postgres.connection(
        "", host=str(local.pg_socket_dir), port=local.pg_port, user=postgres.PG_SUPERUSER, dbname=name
    )
    try:
        infra.drop_database(name, local.urls.database_url)
    finally:
        other.close()
    with postgres.superuser_connection(local) as conn:
        assert conn.execute("select 1 from pg_database where datname = %s", [name]).fetchone() is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def trust_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[infra.ServerSettings]:
    """A cluster of its own made as tools.infra used to: trust on a socket every local user reaches."""
    _needs_root_and_psql()
    # Not under pytest's private tmp: the postgres user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="oms-trust-", dir="/var/tmp"))
    folder.chmod(0o755)
    monkeypatch.setenv("OMS_DATA_DIR", str(folder))
    monkeypatch.setenv("OMS_PG_PORT", str(_free_port()))
    settings = infra.ServerSettings.from_env()
    system.prepare_dir(settings.pg_dir, postgres.PG_SUPERUSER)
    initdb = postgres.binary("initdb", install=False)
    init = [initdb, "-D", str(settings.pg_data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256"]
    system.run(system.as_user(postgres.PG_SUPERUSER, init), timeout=300)
    system.prepare_dir(settings.pg_socket_dir, postgres.PG_SUPERUSER)
    settings.pg_socket_dir.chmod(0o755)
    options = f"-p {settings.pg_port} -k {settings.pg_socket_dir} -c listen_addresses={HOST}"
    postgres.pg_ctl(settings, "start", "-w", "-l", str(settings.pg_log), "-o", options)
    try:
        yield settings
    finally:
        postgres.pg_ctl(settings, "stop", "-m", "immediate", "-w", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_trust_cluster_is_locked_down_when_started_again(trust_cluster: infra.ServerSettings) -> None:
    # As it was: any local user is the superuser over the socket.
    opened = _psql_as_nobody("-h", str(trust_cluster.pg_socket_dir), "-p", str(trust_cluster.pg_port), "-U", "postgres")
    assert opened.returncode == 0, opened.stderr

    assert postgres.start(trust_cluster) == "already running"  # reloaded, not restarted

    _assert_locked_down(trust_cluster)
    _assert_nobody_is_refused(trust_cluster)
    assert postgres.answers(trust_cluster)
    assert postgres.superuser_answers(trust_cluster)


# ---- listeners --------------------------------------------------------------------------------------------


def test_listeners_bind_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OMS_BIND_HOST", "OMS_API_HOST", "OMS_METRICS_HOST"):
        monkeypatch.delenv(variable, raising=False)
    settings = Settings()
    assert (settings.infra.bind_host, settings.api.host, settings.infra.metrics_host) == ("127.0.0.1",) * 3

    monkeypatch.setenv("OMS_BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("OMS_METRICS_HOST", "127.0.0.2")
    settings = Settings()
    assert (settings.infra.bind_host, settings.api.host, settings.infra.metrics_host) == ("0.0.0.0",) * 2 + (
        "127.0.0.2",
    )
    # A section built by hand is not read from the environment: its own defaults.
    assert Settings(api=ApiSettings()).api.host == "127.0.0.1"


def test_process_endpoints_bind_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OMS_BIND_HOST", "OMS_METRICS_HOST"):
        monkeypatch.delenv(variable, raising=False)
    endpoints = serve_process_endpoints(_free_port(), "exposure-test")
    assert endpoints is not None
    try:
        assert endpoints.server.server_address[0] == "127.0.0.1"
    finally:
        endpoints.stop()


def test_containers_listen_on_their_own_interface() -> None:
    # Inside a container loopback would hide every listener; the host publishes them on 127.0.0.1 only.
    assert "OMS_BIND_HOST: 0.0.0.0" in (ROOT / "docker-compose.yml").read_text()
    assert "ENV OMS_BIND_HOST=0.0.0.0" in (ROOT / "Dockerfile").read_text()
