"""Alembic environment: migrations are plain SQL, the URL comes from the caller or OMS_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from common.settings import load_settings

url = context.config.get_main_option("sqlalchemy.url") or load_settings().infra.database_url
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
