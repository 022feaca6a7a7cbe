"""``oms migrate``: apply (or undo) the Alembic migrations, and say where the database stands.

./oms migrate [up] [revision]      up to ``revision`` (default: head)
./oms migrate down [revision]      down to ``revision`` (default: one step)
./oms migrate status               the database's revision against head, and what is pending
./oms migrate history              every revision, oldest first, the database's current one marked
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import create_engine, make_url

from common.settings import REPO_ROOT, load_settings


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


def scripts(url: str = "") -> ScriptDirectory:
    """The migration scripts (``migrations/versions``)."""
    return ScriptDirectory.from_config(_config(url))


def current_revisions(url: str) -> tuple[str, ...]:
    """The revisions the database at ``url`` is at (its ``alembic_version`` rows); () when none is applied."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return tuple(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Status:
    """Where a database stands against the migration scripts."""

    current: tuple[str, ...]  # () on a database no migration was applied to
    heads: tuple[str, ...]
    pending: tuple[Script, ...]  # oldest first

    @property
    def up_to_date(self) -> bool:
        """True when nothing is pending."""
        return not self.pending


def _applied(directory: ScriptDirectory, current: tuple[str, ...]) -> set[str]:
    """Every revision at or below the current ones: the migrations that have run."""
    applied: set[str] = set()
    for revision in current:
        applied.update(script.revision for script in directory.iterate_revisions(revision, "base"))
    return applied


def status(url: str) -> Status:
    """The database's revision(s), the heads, and the revisions ``upgrade`` would apply, in order."""
    directory = scripts(url)
    current = current_revisions(url)
    applied = _applied(directory, current)
    # walk_revisions goes from the heads down; pending is read oldest first, as upgrade applies them.
    pending = tuple(reversed([s for s in directory.walk_revisions() if s.revision not in applied]))
    return Status(current, tuple(directory.get_heads()), pending)


def _title(script: Script) -> str:
    # The first paragraph of the migration's docstring, on one line.
    return " ".join((script.doc or "").split())


def _names(revisions: tuple[str, ...]) -> str:
    return ", ".join(revisions) if revisions else "none (no migration applied)"


def print_status(url: str) -> int:
    """``oms migrate status``: the current revision against head, and every pending revision."""
    state = status(url)
    print(f"database  {make_url(url).render_as_string(hide_password=True)}")
    print(f"current   {_names(state.current)}")
    print(f"head      {_names(state.heads)}")
    if state.up_to_date:
        print("pending   none: up to date")
        return 0
    print(f"pending   {len(state.pending)} (./oms migrate up applies them):")
    for script in state.pending:
        print(f"  {script.revision}  {_title(script)}")
    return 0


def print_history(url: str) -> int:
    """``oms migrate history``: every revision, oldest first, with its message; the current one marked."""
    directory = scripts(url)
    try:
        current: tuple[str, ...] | None = current_revisions(url)
    except Exception as exc:  # the history is in the scripts; only the mark needs the database
        print(f"(database not reachable, current revision unknown: {type(exc).__name__})", file=sys.stderr)
        current = None
    applied = _applied(directory, current or ())
    for script in reversed(list(directory.walk_revisions())):
        mark = "*" if current and script.revision in current else " "
        notes = [
            note
            for note, present in (
                ("current", bool(current) and script.revision in (current or ())),
                ("head", script.is_head),
                ("pending", current is not None and script.revision not in applied),
            )
            if present
        ]
        suffix = f"  ({', '.join(notes)})" if notes else ""
        print(f"{mark} {script.revision}  {_title(script)}{suffix}")
    if current == ():
        print("  (no migration applied to this database)")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``oms migrate [up|down|status|history] [revision]``."""
    parser = argparse.ArgumentParser(
        prog="oms migrate",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", nargs="?", choices=["up", "down", "status", "history"], default="up")
    parser.add_argument("revision", nargs="?", help="target revision (up and down only)")
    parser.add_argument("--url", default=None, help="database URL (default: OMS_DATABASE_URL)")
    args = parser.parse_args(argv)
    url = args.url or load_settings().infra.database_url
    if args.action in ("status", "history"):
        if args.revision:
            parser.error(f"{args.action} takes no revision")
        return print_status(url) if args.action == "status" else print_history(url)
    if args.action == "up":
        upgrade(url, args.revision or "head")
    else:
        downgrade(url, args.revision or "-1")
    return 0
