"""The front end's database engine: bounded waits, so a database outage is a quick 503 / UNAVAILABLE.

A request handler must not hang on the database: the caller's own timeout would fire first and learn nothing.
Each wait is bounded (``OMS_API_DB_TIMEOUT_SECONDS``, ``OMS_API_DB_STATEMENT_TIMEOUT_SECONDS``):

- opening a connection: given up after the timeout (``make_engine``'s ``connect_deadline``), whether nothing
  listens (refused at once), the server accepts but never answers, or packets vanish;
- data sent on an open connection and never acknowledged (the network or the host gone): the kernel drops the
  connection after the timeout (libpq ``tcp_user_timeout``);
- a statement, lock waits included: Postgres cancels it after the statement timeout;
- a pooled connection when every one is taken: the pool gives up after the timeout.

Each failure is an ``OperationalError`` (or the pool's ``TimeoutError``), answered 503 with ``Retry-After`` by
REST (``services.api.health``) and UNAVAILABLE by gRPC. Not bounded: a query already sent to a server that
still holds the TCP connection but has stopped working (a paused process); its statement timeout cannot fire.

Two engines when the read side has a URL of its own (``OMS_READ_DATABASE_URL`` differs from
``OMS_WORKER_DATABASE_URL``: a replica, or the read-only role): the order queries go to ``query_engine``, a
small pool of its own (``OMS_API_READ_POOL_SIZE``); the writes, and every answer that must show them, stay on
the primary (docs/design.md, Reading from a replica). Otherwise one engine, one pool, as before: nothing more
per request. Both carry the data keys, so notes and cancel reasons read back in clear.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from common.settings import ApiSettings, Settings
from common.store.db import bounded_connect_args, make_engine
from common.store.field_crypto import EXECUTION_OPTION, DataKeys, with_data_keys


def connect_args(api: ApiSettings) -> dict[str, object]:
    """The libpq parameters of every front-end connection."""
    return bounded_connect_args(api.db_timeout_seconds, api.db_statement_timeout_seconds)


def _bounded_engine(url: str, api: ApiSettings, **pool: Any) -> Engine:
    return make_engine(
        url,
        connect_args=connect_args(api),
        connect_deadline=api.db_timeout_seconds,
        pool_timeout=api.db_timeout_seconds,
        **pool,
    )


def front_end_engine(settings: Settings) -> Engine:
    """The engine of a REST worker or the gRPC server on the primary (``OMS_WORKER_DATABASE_URL``, the workers'
    role, which ``OMS_DATABASE_URL`` gives when it is the only URL set), its waits bounded, with the data keys."""
    engine = _bounded_engine(settings.infra.worker_database_url, settings.api)
    return with_data_keys(engine, DataKeys(settings.infra.data_keys_file))


def query_engine(settings: Settings, primary: Engine) -> Engine:
    """The engine of the order queries: ``primary`` itself unless ``OMS_READ_DATABASE_URL`` differs from the
    workers' URL; then a pool of its own on it (``OMS_API_READ_POOL_SIZE``), with the same bounds and keys."""
    infra = settings.infra
    if infra.read_database_url == infra.worker_database_url:
        return primary
    engine = _bounded_engine(infra.read_database_url, settings.api, pool_size=settings.api.read_pool_size)
    keys = primary.get_execution_options().get(EXECUTION_OPTION)  # the primary's, shared: one cache, one reload
    return with_data_keys(engine, keys) if isinstance(keys, DataKeys) else engine
