"""docker-compose.yml connects every service as its least-privilege role (migration 0008), never as the schema
owner but for the one-shot ``migrate``, each password from a secret file of ``./oms secrets init``.

Parsed, not run (no Docker engine in CI): the compose file's services, their environment and secrets, and the
settings each service's environment gives (``load_settings`` with the secret files of a fresh ``secrets init``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import make_url

from common.settings import REPO_ROOT, InfraSettings, load_settings
from tools import secrets

COMPOSE = REPO_ROOT / "docker-compose.yml"
SECRETS_DIR = "/run/secrets/"
ROLES = InfraSettings()
OWNER = "oms"
# The secret holding each role's password: the owner's only for postgres itself and migrate.
SECRET_OF_ROLE = {
    OWNER: "postgres_password",
    ROLES.worker_role: "postgres_worker_password",
    ROLES.reader_role: "postgres_reader_password",
    ROLES.retention_role: "postgres_retention_password",
}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _oms_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the OMS image (every one with a database URL)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "OMS_DATABASE_URL" in (service.get("environment") or {})
    }


# Compose's interpolation, `${NAME}` and `${NAME:-default}`, as with none of those variables set.
_INTERPOLATED = re.compile(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}")


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: _INTERPOLATED.sub(lambda m: m[1] or "", str(v)) for k, v in (service.get("environment") or {}).items()}


def _mounted(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def test_only_migrate_holds_the_owners_login() -> None:
    compose = _compose()
    services = _oms_services(compose)
    assert {"migrate", "intake", "risk_gate", "router", "execution_handler", "settlement"} <= set(services)
    assert {"outbox_relay", "venue_sim", "api", "jobs_worker", "jobs_scheduler"} <= set(services)
    for name, service in compose["services"].items():
        owner_secret = "postgres_password" in _mounted(service)
        assert owner_secret is (name in ("postgres", "migrate")), name
    for name, service in services.items():
        users = {
            variable: make_url(value).username
            for variable, value in _env(service).items()
            if variable.endswith("DATABASE_URL")
        }
        if name == "migrate":
            assert users["OMS_DATABASE_URL"] == OWNER
            continue
        assert OWNER not in users.values(), (name, users)
        assert users["OMS_DATABASE_URL"] == ROLES.worker_role, name


def test_every_database_password_comes_from_a_secret_file_of_secrets_init(tmp_path: Path) -> None:
    compose = _compose()
    made = set(secrets.init(tmp_path / "secrets").created)
    for name, service in _oms_services(compose).items():
        env = _env(service)
        for variable, value in env.items():
            assert "PASSWORD" not in variable or variable.endswith("_FILE"), (name, variable)
            if not variable.endswith("DATABASE_URL"):
                continue
            url = make_url(value)
            assert url.password is None, (name, variable)  # never in the file itself
            password_file = env.get(variable.removesuffix("URL") + "PASSWORD_FILE")
            assert password_file is not None and password_file.startswith(SECRETS_DIR), (name, variable)
            secret = password_file.removeprefix(SECRETS_DIR)
            assert secret == SECRET_OF_ROLE[str(url.username)], (name, variable, secret)
            assert secret in _mounted(service), (name, secret)
            assert Path(compose["secrets"][secret]["file"]).name in made, secret


def _settings_of(
    service: dict[str, Any], compose: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The settings the service's environment gives, its /run/secrets files taken from ``folder``."""
    for name in list(os.environ):
        if name.startswith("OMS_"):
            monkeypatch.delenv(name)
    for variable, value in _env(service).items():
        if value.startswith(SECRETS_DIR):
            value = str(folder / Path(compose["secrets"][value.removeprefix(SECRETS_DIR)]["file"]).name)
        monkeypatch.setenv(variable, value)
    return load_settings()


def test_each_service_connects_as_its_role_with_its_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    folder = tmp_path / "secrets"
    secrets.init(folder)
    passwords = {
        role: (folder / Path(compose["secrets"][secret]["file"]).name).read_text().strip()
        for role, secret in SECRET_OF_ROLE.items()
    }
    assert len(set(passwords.values())) == len(passwords)  # four roles, four passwords
    logins: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    for name, service in _oms_services(compose).items():
        infra = _settings_of(service, compose, folder, monkeypatch).infra
        urls = {
            "owner": infra.database_url,
            "worker": infra.worker_database_url,
            "read": infra.read_database_url,
            "retention": infra.retention_database_url,
        }
        logins[name] = {kind: (make_url(u).username, make_url(u).password) for kind, u in urls.items()}
        for kind, (user, password) in logins[name].items():
            assert password == passwords[str(user)], (name, kind, user)  # the role's own, from its file
        assert logins[name]["worker"][0] == ROLES.worker_role, name
    # The API reads as the reader; retention deletes as its role; the owner's URL is migrate's alone.
    assert logins["api"]["read"][0] == ROLES.reader_role
    assert logins["jobs_worker"]["retention"][0] == ROLES.retention_role
    assert logins["migrate"]["owner"][0] == OWNER
    for name, kinds in logins.items():
        if name != "migrate":
            assert kinds["owner"][0] == ROLES.worker_role, name  # OMS_DATABASE_URL is the workers' too
            # Retention falls back to OMS_DATABASE_URL (the workers'): only the jobs worker deletes.
            assert kinds["retention"][0] in (ROLES.worker_role, ROLES.retention_role), name
    # migrate makes the roles from its role URLs (`oms db-roles`), after the schema is there, before the seed.
    migrate = logins["migrate"]
    assert [migrate[k][0] for k in ("worker", "read", "retention")] == [
        ROLES.worker_role,
        ROLES.reader_role,
        ROLES.retention_role,
    ]
    command = " ".join(compose["services"]["migrate"]["command"])
    assert command.index("tools.cli migrate") < command.index("tools.cli db-roles") < command.index("tools.cli seed")


def test_every_service_shares_one_key_ring_in_a_volume() -> None:
    compose = _compose()
    assert "data-keys" in compose["volumes"]
    for name, service in _oms_services(compose).items():
        keys = _env(service)["OMS_DATA_KEYS_FILE"]
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in service.get("volumes", [])}
        assert mounts.get(str(Path(keys).parent)) == "data-keys", name
