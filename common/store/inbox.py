"""The inbox: which messages each stage has handled (a redelivery is skipped) and why the last attempt failed."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, text

from common.store import hot_sql

_CLAIM = hot_sql.hot(
    text(
        "INSERT INTO inbox (stage, message_id, processed_at, digest) "
        "SELECT :stage, m.id, now(), m.digest "
        "FROM unnest(CAST(:ids AS varchar[]), CAST(:digests AS varchar[])) AS m(id, digest) "
        "ON CONFLICT DO NOTHING RETURNING message_id"
    )
)
_RECORDED = hot_sql.hot(
    text("SELECT message_id, digest FROM inbox WHERE stage = :stage AND message_id = ANY(CAST(:ids AS varchar[]))")
)


def claim_inbox(
    connection: Connection, stage: str, messages: Mapping[str, str | None] | list[str]
) -> tuple[set[str], dict[str, str | None]]:
    """Record messages as processed by ``stage``; ``messages`` maps each message id to its body digest.

    Returns ``(fresh, previous)``: the ids that were new, and for each id recorded before, the digest it was
    recorded with (None for rows written before digests were kept). A caller compares ``previous`` with the
    digest of what it holds: equal (or unknown) is a redelivery, different is another message reusing the id.
    """
    digests: Mapping[str, str | None] = messages if isinstance(messages, Mapping) else dict.fromkeys(messages)
    if not digests:
        return set(), {}
    ids = list(digests)
    fresh = set(hot_sql.scalars(connection, _CLAIM, {"stage": stage, "ids": ids, "digests": [digests[i] for i in ids]}))
    seen = [i for i in ids if i not in fresh]
    previous: dict[str, str | None] = {}
    if seen:
        previous = dict(hot_sql.rows(connection, _RECORDED, {"stage": stage, "ids": seen}))
    return fresh, previous


def record_failure(connection: Connection, stage: str, message_id: str, error: str) -> None:
    """Keep the last error of a message whose handling raised, for the dead-letter tooling."""
    connection.execute(
        text(
            "INSERT INTO message_failures (stage, message_id, error, attempts, last_failed_at) "
            "VALUES (:stage, :mid, :error, 1, now()) "
            "ON CONFLICT (stage, message_id) DO UPDATE "
            "SET error = EXCLUDED.error, attempts = message_failures.attempts + 1, last_failed_at = now()"
        ),
        {"stage": stage, "mid": message_id, "error": error[:4000]},
    )
