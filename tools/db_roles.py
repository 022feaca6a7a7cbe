"""``oms db-roles``: the least-privilege roles of a database the OMS does not run itself (docker compose, a server
made elsewhere), made from the role URLs: run as the schema owner (``OMS_DATABASE_URL``) after ``migrate``.

For each of ``OMS_WORKER_DATABASE_URL``, ``OMS_READ_DATABASE_URL`` and ``OMS_RETENTION_DATABASE_URL`` whose user
is the role of its kind (``OMS_DB_WORKER_ROLE`` ...) and which carries a password (in the URL or, as compose
gives it, its ``*_PASSWORD_FILE``), the role is created, or altered, to log in with that password and nothing
more (no superuser, createdb, createrole, replication, bypassrls). Then the rights of migration 0008 are granted
again (GRANT is idempotent): a database migrated before its roles existed gets them too, and a role's password
stays the one in its secret file. Last, the simulated venue's journal tables (which the workers' role may use
but not create).

The local servers (``./oms infra``, ``./oms up``) make their roles themselves (tools/infra/postgres.py); this is
for the others. The owner needs CREATEROLE (the postgres image's ``POSTGRES_USER`` is a superuser).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from sqlalchemy import make_url, text

from common.settings import REPO_ROOT, InfraSettings, load_settings
from common.store.db import make_engine

GRANTS_MIGRATION = REPO_ROOT / "migrations" / "versions" / "0008_roles.py"
_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
# An existing role: only a superuser may even restate NOSUPERUSER, NOREPLICATION, NOBYPASSRLS, so those are
# checked instead (and reported) rather than set.
_ALTER_ATTRIBUTES = "LOGIN NOCREATEDB NOCREATEROLE NOINHERIT"
_POWERS = text("SELECT rolsuper OR rolreplication OR rolbypassrls FROM pg_roles WHERE rolname = :r")


def role_logins(infra: InfraSettings) -> dict[str, str]:
    """The roles to make: role name -> password, from the URLs whose user is their kind's role."""
    wanted = (
        (infra.worker_database_url, infra.worker_role),
        (infra.read_database_url, infra.reader_role),
        (infra.retention_database_url, infra.retention_role),
    )
    logins: dict[str, str] = {}
    for url, role in wanted:
        parsed = make_url(url)
        if parsed.username == role and parsed.password:
            logins[role] = str(parsed.password)
    return logins


def _migration_grants() -> Callable[[Any], list[str]]:
    """Migration 0008's ``_grants``: the one list of every role's rights, applied here again as it is."""
    spec = importlib.util.spec_from_file_location("oms_migration_0008_roles", GRANTS_MIGRATION)
    if spec is None or spec.loader is None:  # pragma: no cover - the file is part of the repository
        raise RuntimeError(f"cannot load {GRANTS_MIGRATION}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grants: Callable[[Any], list[str]] = module._grants
    return grants


def ensure(owner_url: str, infra: InfraSettings) -> list[str]:
    """Make the roles of ``infra``'s URLs, grant them their rights, prepare the venue's tables; what it did."""
    from tools.infra import prepare_venue_tables

    done: list[str] = []
    engine = make_engine(owner_url, pool_size=1)
    try:
        with engine.begin() as connection:
            for role, password in role_logins(infra).items():
                exists = connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
                # Identifier and literal quoted by Postgres itself (quote_ident, quote_literal): a password never
                # reaches the statement unquoted, and none is logged.
                quoted = connection.execute(
                    text("SELECT quote_ident(:r), quote_literal(:p)"), {"r": role, "p": password}
                ).one()
                verb, attributes = ("ALTER", _ALTER_ATTRIBUTES) if exists else ("CREATE", _ROLE_ATTRIBUTES)
                connection.execute(text(f"{verb} ROLE {quoted[0]} {attributes} PASSWORD {quoted[1]}"))
                done.append(f"{'updated' if exists else 'created'} role {role}")
                if connection.execute(_POWERS, {"r": role}).scalar():
                    done.append(f"WARNING: role {role} is a superuser or may replicate or bypass row security")
            migrated = connection.execute(text("SELECT to_regprocedure('refresh_daily_order_statistics()')")).scalar()
            if migrated is None:
                done.append("schema not migrated to 0008 yet: `oms migrate` grants the rights")
                return done
            statements = _migration_grants()(connection)
            for statement in statements:
                connection.execute(text(statement))
            done.append(f"granted migration 0008's rights ({len(statements)} statements)")
    finally:
        engine.dispose()
    prepare_venue_tables(owner_url, infra.worker_role)
    done.append("venue journal tables ready")
    return done


def main(argv: list[str]) -> int:
    """Entry point of ``oms db-roles``."""
    parser = argparse.ArgumentParser(prog="oms db-roles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the schema owner's database URL (default: OMS_DATABASE_URL)")
    args = parser.parse_args(argv)
    infra = load_settings().infra
    owner = args.url or infra.database_url
    if not role_logins(infra):
        print(
            "oms db-roles: no role URL names its role with a password (OMS_WORKER_DATABASE_URL and its"
            " OMS_WORKER_DATABASE_PASSWORD_FILE ...): nothing to make",
            file=sys.stderr,
        )
    for line in ensure(owner, infra):
        print(line)
    return 0
