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
"""

from __future__ import annotations

import math

from sqlalchemy import Engine

from common.settings import ApiSettings, Settings
from common.store.db import make_engine

# libpq's connect_timeout is whole seconds and at least 2: the backstop of the helper thread that
# ``connect_deadline`` gives up on, so that thread ends soon after.
_LIBPQ_CONNECT_TIMEOUT = 2


def connect_args(api: ApiSettings) -> dict[str, object]:
    """The libpq parameters of every front-end connection."""
    return {
        "connect_timeout": max(_LIBPQ_CONNECT_TIMEOUT, math.ceil(api.db_timeout_seconds)),
        "tcp_user_timeout": max(1, round(api.db_timeout_seconds * 1000)),
        "options": f"-c statement_timeout={max(1, round(api.db_statement_timeout_seconds * 1000))}",
    }


def front_end_engine(settings: Settings) -> Engine:
    """The engine of a REST worker or the gRPC server on the configured database, its waits bounded."""
    api = settings.api
    return make_engine(
        settings.infra.database_url,
        connect_args=connect_args(api),
        connect_deadline=api.db_timeout_seconds,
        pool_timeout=api.db_timeout_seconds,
    )
