"""``oms migrate``: apply (or undo) the Alembic migrations."""

from __future__ import annotations

import argparse

from alembic import command
from alembic.config import Config

from common.config import REPO_ROOT, load_settings


def _config(url: str) -> Config:
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    # ConfigParser interpolation would choke on a '%' in a password.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    command.upgrade(_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision``."""
    command.downgrade(_config(url), revision)


def main(argv: list[str]) -> int:
    """Entry point of ``oms migrate [up|down] [revision]``."""
    parser = argparse.ArgumentParser(prog="oms migrate")
    parser.add_argument("direction", nargs="?", choices=["up", "down"], default="up")
    parser.add_argument("revision", nargs="?")
    parser.add_argument("--url", default=None, help="database URL (default: OMS_DATABASE_URL)")
    args = parser.parse_args(argv)
    url = args.url or load_settings().database_url
    if args.direction == "up":
        upgrade(url, args.revision or "head")
    else:
        downgrade(url, args.revision or "-1")
    return 0
