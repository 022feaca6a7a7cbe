"""Refresh the ``daily_order_statistics`` materialized view (the read model of daily counts and notionals)."""

from __future__ import annotations

from sqlalchemy import Engine, text

# CONCURRENTLY keeps the view readable while it refreshes (it needs the view's unique index, which it has).
# Through a function that runs as the view's owner (migration 0008): only the owner may refresh it, and the
# jobs worker connects as the workers' role.
_REFRESH = text("SELECT refresh_daily_order_statistics()")
_ROWS = text("SELECT count(*) FROM daily_order_statistics")


def refresh_statistics(engine: Engine) -> dict[str, int]:
    """Bring the view up to date with the orders; returns how many (day, account) rows it now has."""
    with engine.begin() as connection:
        connection.execute(_REFRESH)
    with engine.connect() as connection:
        return {"rows": int(connection.execute(_ROWS).scalar_one())}
