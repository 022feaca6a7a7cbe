"""The request ids the simulated venue has answered, kept so that it refuses a request it has seen before.

A real venue refuses a second order with a ClOrdID it has already taken, and remembers across its own
restarts. So does this one: every answered ``routing key/requestId`` goes into a table of the venue's own,
``venue_sim_requests``, created at start with plain SQL (it is the simulator's state, not the OMS's schema:
no Alembic revision), and the keys of the last days are loaded back when the venue starts.

When a key is written: after the request's reports are confirmed by the broker and before the request is
acked. A crash before the write leaves the request unacked, so it comes back and is answered (its first
answer never left, or left and was confirmed: then the OMS's execution-id dedupe takes the copy); a crash
after the write leaves the copy refused, its answer already with the broker. Keys are also kept in memory
from the moment the request is applied, so a copy redelivered to this same process (a dropped connection)
is refused even before the write. While the database is away writes are kept and retried with the next
batch; only a restart during a database outage forgets them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

TABLE = "venue_sim_requests"
KEEP_DAYS = 7
CONNECT_TIMEOUT_SECONDS = 5

_CREATE = """
CREATE TABLE IF NOT EXISTS venue_sim_requests (
    request_key VARCHAR(200) PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
_PRUNE = "DELETE FROM venue_sim_requests WHERE seen_at < now() - make_interval(days => %s)"
_LOAD = "SELECT request_key FROM venue_sim_requests"
_INSERT = "INSERT INTO venue_sim_requests (request_key) SELECT unnest(%s::varchar[]) ON CONFLICT DO NOTHING"


def request_key(routing_key: str, request_id: str) -> str:
    """What identifies a request: its kind (new, cancel, replace) and its requestId."""
    return f"{routing_key}/{request_id}"


class SeenRequests:
    """Request keys answered so far: in memory, and in Postgres when a database URL is given."""

    def __init__(self, database_url: str | None) -> None:
        self._url = (
            make_url(database_url).set(drivername="postgresql").render_as_string(False) if database_url else None
        )
        self._seen: set[str] = set()
        self._unsaved: list[str] = []

    @property
    def persistent(self) -> bool:
        """Whether keys outlive the process."""
        return self._url is not None

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        assert self._url is not None
        return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)

    def _load(self) -> set[str]:
        with self._connect() as connection:
            connection.execute(_CREATE)
            connection.execute(_PRUNE, (KEEP_DAYS,))
            return {str(row[0]) for row in connection.execute(_LOAD)}

    async def load(self, stopping: asyncio.Event) -> None:
        """Create the table and load the keys, waiting with back-off while the database is away."""
        if self._url is None:
            return
        delay = 0.5
        attempt = 0
        while not stopping.is_set():
            attempt += 1
            try:
                self._seen |= await asyncio.to_thread(self._load)
                log.info("venue request ids loaded", extra={"count": len(self._seen)})
                return
            except psycopg.Error as exc:
                log.warning(
                    "database not reachable; the venue waits for it to load the request ids it has seen",
                    extra={"attempt": attempt, "delay": delay, "error": repr(exc)},
                )
            try:
                await asyncio.wait_for(stopping.wait(), delay)  # back-off, ended early by stop()
            except TimeoutError:
                pass
            delay = min(delay * 2, 30.0)

    def seen(self, key: str) -> bool:
        """Whether the request was answered before (by this process or an earlier one)."""
        return key in self._seen

    def remember(self, key: str) -> None:
        """Note a request as answered (in memory now; in the database at the next ``save``)."""
        self._seen.add(key)
        if self._url is not None:
            self._unsaved.append(key)

    def _insert(self, keys: Iterable[str]) -> None:
        with self._connect() as connection:
            connection.execute(_INSERT, (list(keys),))

    async def save(self) -> bool:
        """Write the keys noted since the last save; False (keeping them for the next try) if that failed."""
        if not self._unsaved:
            return True
        keys, self._unsaved = self._unsaved, []
        try:
            await asyncio.to_thread(self._insert, keys)
            return True
        except psycopg.Error as exc:
            self._unsaved = keys + self._unsaved
            log.warning(
                "request ids not saved; kept to retry with the next batch",
                extra={"count": len(self._unsaved), "error": repr(exc)},
            )
            return False
