"""What a handler sees of a delivery: ids, routing key, headers, and the validated body."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from common.messages.headers import USER_HEADER


@dataclass(frozen=True)
class Envelope:
    """A validated message, handed to a stage handler."""

    message_id: str
    routing_key: str
    body: dict[str, Any]
    correlation_id: str | None = None
    type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    # sha256 of the raw body bytes: the inbox keeps it to tell a redelivery from a different message that
    # reuses the id. None where the runtime has not set it (tests building envelopes by hand).
    digest: str | None = None

    @property
    def user_id(self) -> str | None:
        """The user a front-end request was made by (header ``x-oms-user``), if any."""
        value = self.headers.get(USER_HEADER)
        return str(value) if value is not None else None


def message_id_of(message: AbstractIncomingMessage) -> str:
    """The message's id; a producer that sent none gets one derived from the body, stable across redeliveries."""
    if message.message_id:
        return str(message.message_id)
    return "sha256:" + hashlib.sha256(message.body).hexdigest()


def body_digest(body: bytes) -> str:
    """The digest the inbox keeps of a message body (sha256, hex)."""
    return hashlib.sha256(body).hexdigest()
