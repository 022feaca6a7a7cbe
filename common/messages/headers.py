"""The AMQP headers the OMS sets and reads (``x-oms-*``), and what each means."""

from __future__ import annotations

# The user a front-end request acts for, carried from the order command on to every stage after it.
USER_HEADER = "x-oms-user"
# On a carrier (many records in one message): how many records it holds, for batch sizing before the body is read.
CARRIER_HEADER = "x-oms-batch"
# On a dead letter the OMS dead-lettered itself.
ERROR_HEADER = "x-oms-error"
STAGE_HEADER = "x-oms-stage"
ORIGINAL_EXCHANGE_HEADER = "x-oms-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER = "x-oms-original-routing-key"
DEAD_LETTERED_AT_HEADER = "x-oms-dead-lettered-at"
# On a message ``oms dlq replay`` sent back.
REPLAYED_AT_HEADER = "x-oms-replayed-at"
REPLAY_RUN_HEADER = "x-oms-replay-run"

# On a trade decision, set by its publisher: the account, which the broker hashes to pick the intake partition, so
# that one account's decisions stay in order across intake replicas.
ACCOUNT_HEADER = "x-account-id"

# For docs/messages.md, in the order the page lists them.
HEADER_SUMMARIES: dict[str, str] = {
    USER_HEADER: "the user a front-end request acts for (order commands, and every hand-over after them)",
    CARRIER_HEADER: "on a carrier between stages: how many records it holds",
    ERROR_HEADER: "on a dead letter the OMS refused: the validation messages or the reason",
    STAGE_HEADER: "on a dead letter: the stage (or `venue_sim`) that dead-lettered it",
    ORIGINAL_EXCHANGE_HEADER: "on a dead letter: the exchange it was first published to",
    ORIGINAL_ROUTING_KEY_HEADER: "on a dead letter: the routing key it was first published with",
    DEAD_LETTERED_AT_HEADER: "on a dead letter: when (ISO 8601)",
    REPLAYED_AT_HEADER: "on a message `oms dlq replay` sent back: when",
    REPLAY_RUN_HEADER: "on a message `oms dlq replay` sent back: the replay run's id",
    ACCOUNT_HEADER: "on a trade decision (optional, set by its publisher): the account, which picks the intake "
    "partition; decisions without it all go to one partition",
}


def user_headers(user_id: str | None) -> dict[str, str]:
    """The headers naming the user a message acts for (none when there is no user)."""
    return {USER_HEADER: user_id} if user_id else {}
