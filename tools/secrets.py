"""``./oms secrets init``: the secrets docker-compose.yml reads, generated into ./secrets (git-ignored).

    ./oms secrets init                # make the missing secrets; those there are kept
    ./oms secrets init --dir FOLDER   # somewhere else (then point docker-compose.yml's `secrets:` there)

What it writes (each a random 32-byte URL-safe string on one line):

- ``postgres-password.txt``: the schema owner's password (the postgres image's ``POSTGRES_PASSWORD_FILE``), which
  only the one-shot ``migrate`` service gets;
- ``postgres-<kind>-password.txt`` (worker, reader, retention): the least-privilege roles' passwords
  (``OMS_WORKER_DATABASE_PASSWORD_FILE`` ...), which ``migrate`` gives the roles (``oms db-roles``) and each
  service gets for its own role only;
- ``jwt-secret.txt``: the token signing secret (``OMS_JWT_SECRET_FILE``);
- ``grafana-admin-password.txt``: Grafana's ``admin`` password (the observability profile);
- ``rabbitmq-erlang-cookie.txt``: the Erlang cookie every RabbitMQ node shares (the cluster profile's nodes
  authenticate one another, and their CLI tools them, with it);
- ``rabbitmq-<kind>.txt``: the password of each broker user (tools/infra/brokerusers.py), ``OMS_AMQP_PASSWORD_FILE``
  of its processes; ``rabbitmq-admin.txt`` is the operator's login to the management UI (user ``oms-admin``);
- ``rabbitmq-users.json``: derived from those, rewritten at every run: the broker's users (password hashes),
  their permissions and topic permissions, which the broker loads at boot after the topology.

The folder is made 0700 (only you reach it); the files are 0644 because the containers' users (postgres,
rabbitmq, oms) are not you and read them through their bind mounts. To change a secret, delete its file, run
this again, and recreate the containers that use it (the broker updates its users at boot).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from common.settings import REPO_ROOT, read_secret_file
from tools.infra import brokerusers
from tools.infra.settings import HOST, InfraUrls, ServerSettings

DEFAULT_FOLDER = REPO_ROOT / "secrets"
# Read by containers running as other users: readable by all, kept private by the folder's 0700.
FILE_MODE = 0o644
PLAIN_SECRETS = (
    "postgres-password.txt",
    "postgres-worker-password.txt",
    "postgres-reader-password.txt",
    "postgres-retention-password.txt",
    "jwt-secret.txt",
    "grafana-admin-password.txt",
    "rabbitmq-erlang-cookie.txt",
)
USERS_DEFINITIONS = "rabbitmq-users.json"


@dataclass
class Report:
    """What ``init`` did."""

    folder: Path
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def init(folder: Path = DEFAULT_FOLDER) -> Report:
    """Make every secret missing from ``folder`` (keeping those there) and write the broker's users file."""
    report = Report(folder)
    names = [*PLAIN_SECRETS, *(brokerusers.password_file_name(user) for user in brokerusers.BROKER_USERS)]
    for name in names:
        (report.kept if (folder / name).exists() else report.created).append(name)
        brokerusers.ensure_secret(folder / name, FILE_MODE)
    passwords = brokerusers.passwords(folder, FILE_MODE)
    users = folder / USERS_DEFINITIONS
    users.write_text(json.dumps(brokerusers.definitions(passwords), indent=2) + "\n")
    users.chmod(FILE_MODE)
    return report


def compose_urls(settings: ServerSettings, folder: Path = DEFAULT_FOLDER) -> InfraUrls:
    """Where docker compose's servers answer on this machine, with the logins of ``folder``: the database's
    ``oms`` and the broker's operator (``oms-admin``; the compose broker has no guest)."""
    database = quote(read_secret_file(folder / "postgres-password.txt"), safe="")
    admin = brokerusers.BY_KIND["admin"]
    login = f"{admin.name}:{quote(read_secret_file(folder / brokerusers.password_file_name(admin)), safe='')}"
    return InfraUrls(
        database_url=f"postgresql+psycopg://oms:{database}@{HOST}:{settings.pg_port}/oms",
        amqp_url=f"amqp://{login}@{HOST}:{settings.amqp_port}/",
        management_url=f"http://{login}@{HOST}:{settings.management_port}/",
    )


def main(argv: list[str]) -> int:
    """``oms secrets init [--dir FOLDER]``."""
    parser = argparse.ArgumentParser(prog="oms secrets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("init", help="generate the missing secrets docker-compose.yml reads")
    make.add_argument("--dir", type=Path, default=DEFAULT_FOLDER, help="default: ./secrets")
    args = parser.parse_args(argv)
    report = init(args.dir.resolve())
    print(f"secrets in {report.folder} (folder 0700, git-ignored):")
    for name in report.created:
        print(f"  created  {name}")
    for name in report.kept:
        print(f"  kept     {name}")
    print(f"  wrote    {USERS_DEFINITIONS} (the broker's users, permissions and password hashes)")
    print(f"operator login to the RabbitMQ UI: oms-admin, password in {report.folder / 'rabbitmq-admin.txt'}")
    return 0
