"""``oms db-roles`` (what docker compose's ``migrate`` runs): from the role URLs and their password files, the
roles are made and granted migration 0008's rights on a database migrated before they existed, and each logs
in with its secret file's password and can do what its kind may, nothing more.

On the local server only (tools.infra's): the roles are the cluster's, so the test makes its own owner (with
CREATEROLE, as the postgres image's owner has) and roles of its own names, through the superuser, and drops them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError

from common.store.db import make_engine
from tools import db_roles, infra, migrate
from tools.infra import InfraUrls, postgres

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Cluster:
    owner_url: str
    urls: dict[str, str]  # kind -> URL without password
    roles: dict[str, str]  # kind -> role name
    password_files: dict[str, Path]


@pytest.fixture()
def cluster(infra_urls: InfraUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    settings = infra.ServerSettings.from_env()
    if infra_urls.database_url != settings.urls.database_url:
        pytest.skip("this session's servers are not the local ones that tools.infra manages")
    try:
        postgres.superuser_connection(settings).close()
    except Exception as exc:  # any reason the superuser is out of reach skips
        pytest.skip(f"the local superuser is out of reach: {exc}")
    suffix = uuid.uuid4().hex[:8]
    owner, database = f"t_owner_{suffix}", f"oms_roles_{suffix}"
    roles = {"worker": f"t_worker_{suffix}", "read": f"t_reader_{suffix}", "retention": f"t_retention_{suffix}"}
    base = f"127.0.0.1:{settings.pg_port}/{database}"
    owner_url = f"postgresql+psycopg://{owner}:owner-pw@{base}"
    with postgres.superuser_connection(settings) as admin:
        admin.execute(f"create role \"{owner}\" login createrole password 'owner-pw'")
        admin.execute(f'create database "{database}" owner "{owner}"')
    files = {}
    for kind in roles:
        files[kind] = tmp_path / f"postgres-{kind}-password.txt"
        files[kind].write_text(f"{kind} p@ss/{suffix}\n")  # characters a URL must quote
    # As compose's migrate service has it: the role names, and each URL with its password in a file.
    env = {
        "OMS_DATABASE_URL": owner_url,
        "OMS_DB_WORKER_ROLE": roles["worker"],
        "OMS_DB_READER_ROLE": roles["read"],
        "OMS_DB_RETENTION_ROLE": roles["retention"],
    }
    urls = {kind: f"postgresql+psycopg://{role}@{base}" for kind, role in roles.items()}
    for kind, variable in (("worker", "WORKER"), ("read", "READ"), ("retention", "RETENTION")):
        env[f"OMS_{variable}_DATABASE_URL"] = urls[kind]
        env[f"OMS_{variable}_DATABASE_PASSWORD_FILE"] = str(files[kind])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield Cluster(owner_url, urls, roles, files)
    finally:
        with postgres.superuser_connection(settings) as admin:
            admin.execute(f'drop database if exists "{database}" with (force)')
            for role in (*roles.values(), owner):
                admin.execute(f'drop role if exists "{role}"')


def _login(cluster: Cluster, kind: str) -> Engine:
    """An engine logged in as the role of ``kind`` with its secret file's password (the caller disposes of it)."""
    password = quote(cluster.password_files[kind].read_text().strip(), safe="")
    return make_engine(cluster.urls[kind].replace("@", f":{password}@", 1), pool_size=1)


def _refused(engine: Engine, statement: str) -> bool:
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    except ProgrammingError as exc:
        assert "permission denied" in str(exc)
        return True
    return False


def test_db_roles_makes_the_roles_of_the_urls_and_grants_them_their_rights(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate.upgrade(cluster.owner_url)  # before the roles exist: 0008 skips their grants
    assert db_roles.main([]) == 0
    out = capsys.readouterr().out
    assert all(f"created role {role}" in out for role in cluster.roles.values()), out
    assert "granted migration 0008's rights" in out and "venue journal tables ready" in out
    assert db_roles.main([]) == 0  # again (every migrate run): the roles are updated to their files' passwords
    again = capsys.readouterr().out
    assert all(f"updated role {role}" in again for role in cluster.roles.values()), again

    worker, reader, retention = (_login(cluster, kind) for kind in ("worker", "read", "retention"))
    try:
        _check_rights(cluster, worker, reader, retention)
    finally:
        for engine in (worker, reader, retention):
            engine.dispose()


def _check_rights(cluster: Cluster, worker: Engine, reader: Engine, retention: Engine) -> None:
    with worker.begin() as connection:
        connection.execute(
            text("INSERT INTO inbox (stage, message_id, processed_at) VALUES ('t', :m, now())"),
            {"m": str(uuid.uuid4())},
        )
        connection.execute(text("SELECT count(*) FROM venue_sim_state")).scalar_one()
    assert _refused(worker, "UPDATE order_events SET type = type")
    assert _refused(worker, "DELETE FROM order_events")
    assert _refused(worker, "CREATE TABLE t_not_allowed (id int)")

    with reader.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM order_summary")).scalar_one() == 0
    assert _refused(reader, "INSERT INTO inbox (stage, message_id, processed_at) VALUES ('t', 'x', now())")

    with retention.begin() as connection:
        connection.execute(text("DELETE FROM outbox WHERE false"))
    assert _refused(retention, "UPDATE orders SET version = version")
    # No role has more than its grants: none may create roles or databases, or log in as a superuser.
    with reader.connect() as connection:
        flags = connection.execute(
            text(
                "SELECT bool_or(rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls) FROM pg_roles"
                " WHERE rolname = ANY(:roles)"
            ),
            {"roles": list(cluster.roles.values())},
        ).scalar_one()
    assert flags is False
