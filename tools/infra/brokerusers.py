"""RabbitMQ users, one per kind of process, each allowed only the exchanges and queues its kind uses.

A process logs in as the user of its kind (``oms-router``, ...), never as ``guest``. The permissions follow from
the message catalogue and the topology (common/messages, common/messaging/topology.py), so a new kind of
message or a new stage changes them with it. RabbitMQ's rules (https://www.rabbitmq.com/docs/access-control):

- declaring an exchange or a queue needs *configure* on it (a passive declaration needs nothing);
- binding a queue needs *write* on the queue and *read* on the exchange;
- publishing needs *write* on the exchange (the default exchange is ``amq.default``);
- consuming or getting from a queue needs *read* on it.

On the topic exchanges a *topic permission* narrows the routing keys a user may publish, so that no process
but the venue (and the API's gRPC ``UpdateOrderStatus``) can publish an execution report on ``oms``, none but
the strategy a trade decision, and the relay only what stages hand over or send out.

These users go with ``OMS_AMQP_DECLARE_TOPOLOGY=false``: the broker's definitions (ops/rabbitmq-definitions.json,
loaded at boot; a sandbox imports them into its vhost) own the topology, and a process only looks its queue up
(a passive declaration needs no permission). Declaring would need far more: declaring a queue that dead-letters
needs *read* on it, so a process declaring the whole pipeline could consume every stage's queue. What is left
to declare is a live subscription's exclusive queue (and its exchange) and dramatiq's queues.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.messages.catalogue import (
    BROKER_REQUESTS,
    EXECUTION_REPORT,
    FILL_BOOKED,
    KINDS,
    ORDER_UPDATE,
    POSITION_UPDATE,
    PRICE,
    RISK_CHECK,
    ROUTE_NEW,
    ROUTE_REPLACE,
    TRADE_DECISION,
    Direction,
    MessageKind,
)
from common.messages.exchanges import DEAD_LETTER_EXCHANGE, MARKETDATA_EXCHANGE, ORDER_UPDATES_EXCHANGE, TOPIC_EXCHANGES
from common.messaging.topology import STAGE_QUEUES, VENUE_QUEUE
from services.jobs.config import JOBS_QUEUE

USER_PREFIX = "oms-"
# What a permission that allows nothing is written as: matches only the empty name, which names nothing that
# can be declared, bound or consumed.
NOTHING = "^$"
EVERYTHING = ".*"
DEFAULT_EXCHANGE = "amq.default"  # the name permissions give the default exchange ("")
# The exclusive queues of live subscriptions (prices, order updates): named by aio-pika on a robust channel
# (``amq_<uuid hex>``, so it can declare the same one again after a reconnect), else by the broker.
SUBSCRIPTION_QUEUES = r"amq_[0-9a-f]{32}|amq\.gen-.*"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


def _exact(*names: str) -> tuple[str, ...]:
    return tuple(re.escape(name) for name in names)


def pattern(parts: Iterable[str]) -> str:
    """One anchored regular expression matching any of ``parts`` (themselves regular expressions)."""
    unique = sorted(set(parts))
    return f"^({'|'.join(unique)})$" if unique else NOTHING


@dataclass(frozen=True)
class Access:
    """Resource patterns (regular expressions, already escaped) a user may configure, write and read."""

    configure: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    def __add__(self, other: Access) -> Access:
        return Access(self.configure + other.configure, self.write + other.write, self.read + other.read)


DEAD_LETTER_QUEUES = _exact(*(q.dead_letter_name for q in [*STAGE_QUEUES.values(), VENUE_QUEUE]))
# A stage (or the venue) copies a message it cannot handle to its dead-letter queue itself, with the reason.
DEAD_LETTERING = Access(write=_exact(DEAD_LETTER_EXCHANGE))
# dramatiq declares its queue, delay queue and dead-letter queue before it first uses them (there is no passive
# mode), and the first two dead-letter: declaring them needs read on them, and write on the default exchange
# they dead-letter through, which is also where dramatiq publishes.
ENQUEUE_JOBS = Access(
    configure=_exact(JOBS_QUEUE, f"{JOBS_QUEUE}.DQ", f"{JOBS_QUEUE}.XQ"),
    write=_exact(DEFAULT_EXCHANGE),
    read=_exact(JOBS_QUEUE, f"{JOBS_QUEUE}.DQ"),
)


def subscription(exchange: str) -> Access:
    """``declare_subscription``: the exchange declared, an exclusive queue declared, bound to it and consumed."""
    return Access(
        configure=(SUBSCRIPTION_QUEUES, *_exact(exchange)),
        write=(SUBSCRIPTION_QUEUES,),
        read=(SUBSCRIPTION_QUEUES, *_exact(exchange)),
    )


def consuming(*queues: str) -> Access:
    """Consuming (or getting from) these queues."""
    return Access(read=_exact(*queues))


def key_pattern(kind: MessageKind) -> str:
    """The routing keys of ``kind`` as a regular expression: its key, or its binding's words as wildcards."""
    if kind.fixed_key:
        # A hand-over between stages goes to a partition: its key may end with the partition's number.
        return re.escape(kind.routing_key) + (r"(\.[0-9]+)?" if kind.internal else "")
    words = []
    for word in kind.bound_key.split("."):
        words.append({"*": r"[^.]+", "#": ".*"}.get(word, re.escape(word)))
    return r"\.".join(words)


@dataclass(frozen=True)
class BrokerUser:
    """The broker user of one kind of process.

    ``publishes``: the kinds of message it publishes; their exchanges join ``access.write`` and, on a topic
    exchange, their routing keys make its topic permission (a kind whose keys are anything, like the order
    updates, leaves that exchange's keys open).
    """

    kind: str
    summary: str
    processes: tuple[str, ...] = ()
    access: Access = field(default_factory=Access)
    publishes: tuple[MessageKind, ...] = ()
    tags: tuple[str, ...] = ()
    everything: bool = False  # the operator: every permission (with the administrator tag)

    @property
    def name(self) -> str:
        """The user name on the broker."""
        return USER_PREFIX + self.kind

    def permissions(self) -> dict[str, str]:
        """configure, write and read as RabbitMQ takes them (one anchored regular expression each)."""
        if self.everything:
            return {"configure": EVERYTHING, "write": EVERYTHING, "read": EVERYTHING}
        written = self.access.write + _exact(*(kind.exchange for kind in self.publishes))
        return {
            "configure": pattern(self.access.configure),
            "write": pattern(written),
            "read": pattern(self.access.read),
        }

    def topic_permissions(self) -> dict[str, str]:
        """Topic exchange -> the routing keys this user may publish there (exchanges left open are absent)."""
        keys: dict[str, list[str]] = {}
        for kind in self.publishes:
            if kind.exchange in TOPIC_EXCHANGES:
                keys.setdefault(kind.exchange, []).append(key_pattern(kind))
        return {exchange: pattern(parts) for exchange, parts in keys.items() if ".*" not in parts}


def _stage(stage: str, summary: str, publishes: tuple[MessageKind, ...], extra: Access = Access()) -> BrokerUser:
    # Every stage may publish order updates: whatever changes an order's public view writes one with it.
    return BrokerUser(
        kind=stage,
        summary=summary,
        processes=(stage,),
        access=DEAD_LETTERING + consuming(*(q.name for q in STAGE_QUEUES[stage].partition_queues())) + extra,
        publishes=(*publishes, ORDER_UPDATE),
    )


# What an outbox may hold: the hand-overs between stages and what the OMS sends out (never what comes in).
OUTBOX_KINDS = tuple(k for k in KINDS if k.direction in (Direction.INTERNAL, Direction.OUT) and k.retired is None)
# What a dead-letter queue may hold, and so what a replay sends back: what the stages and the venue consume.
REPLAYABLE_KINDS = tuple(k for k in KINDS if k.stage is not None or k in BROKER_REQUESTS)
DEAD_LETTER_TOOLS = Access(read=DEAD_LETTER_QUEUES)  # queue depths are passive declarations: no permission

BROKER_USERS: tuple[BrokerUser, ...] = (
    _stage("intake", "the intake stage: trade decisions in, risk checks out", (RISK_CHECK,)),
    _stage(
        "risk_gate",
        "the risk gate: risk checks in, approved orders out; follows the prices on `marketdata`",
        (ROUTE_NEW, ROUTE_REPLACE),
        subscription(MARKETDATA_EXCHANGE),
    ),
    _stage("router", "the router: routing requests in, venue requests out on `broker`", BROKER_REQUESTS),
    _stage("execution_handler", "the execution handler: execution reports in, booked fills out", (FILL_BOOKED,)),
    _stage(
        "settlement", "the settlement stage: booked fills in, position updates out on `portfolio`", (POSITION_UPDATE,)
    ),
    BrokerUser(
        kind="relay",
        summary="the outbox relay: publishes what a writer left in its outbox; declares, binds and reads nothing",
        processes=("outbox_relay",),
        publishes=OUTBOX_KINDS,
    ),
    BrokerUser(
        kind="venue",
        summary="the simulated venue (the broker integration service): venue requests in, reports and prices out",
        processes=("venue_sim",),
        access=DEAD_LETTERING + consuming(VENUE_QUEUE.name),
        publishes=(EXECUTION_REPORT, PRICE),
    ),
    BrokerUser(
        kind="api",
        summary="the REST and gRPC front end: the order update stream, and gRPC `UpdateOrderStatus` reports",
        processes=("api",),
        access=subscription(ORDER_UPDATES_EXCHANGE),
        publishes=(EXECUTION_REPORT,),
    ),
    BrokerUser(
        kind="jobs",
        summary="the jobs worker and scheduler: dramatiq's queues, dead-letter depths and replays",
        processes=("jobs_worker", "jobs_scheduler"),
        access=ENQUEUE_JOBS + DEAD_LETTER_TOOLS,
        publishes=REPLAYABLE_KINDS,
    ),
    BrokerUser(
        kind="dlq",
        summary="`./oms dlq`, the operator's dead-letter tool: reads the dead-letter queues, replays their messages",
        # `--background` enqueues the replay as a job instead (dramatiq's declarations, see ENQUEUE_JOBS).
        access=DEAD_LETTER_TOOLS + ENQUEUE_JOBS,
        publishes=REPLAYABLE_KINDS,
    ),
    BrokerUser(
        kind="strategy",
        summary="the strategy service (and `./oms decision`): trade decisions in",
        publishes=(TRADE_DECISION,),
    ),
    BrokerUser(
        kind="admin",
        summary="the operator: the management UI and API (administrator), every permission",
        tags=("administrator",),
        everything=True,
    ),
)
BY_KIND: dict[str, BrokerUser] = {user.kind: user for user in BROKER_USERS}
BY_PROCESS: dict[str, BrokerUser] = {process: user for user in BROKER_USERS for process in user.processes}


def password_file_name(user: BrokerUser) -> str:
    """The file of ``user``'s password in a secrets folder (the local data folder's, or ./secrets for compose)."""
    return f"rabbitmq-{user.kind}.txt"


def password_hash(user: str, password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` of ``password``: base64(salt + sha256(salt + password)).

    The 4-byte salt is derived from the user and the password, so the same password gives the same hash and
    the files written from it change only when the password does; the passwords are random (32 bytes), which
    is what makes the hash hard to reverse, not the salt.
    """
    salt = hashlib.sha256(f"oms-broker-user\0{user}\0{password}".encode()).digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def password_matches(stored_hash: str, password: str) -> bool:
    """Whether ``stored_hash`` (SHA-256, as the management API shows it) is the hash of ``password``."""
    try:
        raw = base64.b64decode(stored_hash)
    except ValueError:
        return False
    salt, digest = raw[:4], raw[4:]
    return len(raw) == 36 and hashlib.sha256(salt + password.encode()).digest() == digest


def definitions(
    passwords: Mapping[str, str], vhost: str = "/", extra_users: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The users (by name, with their passwords in ``passwords``), permissions and topic permissions on ``vhost``
    as a RabbitMQ definitions document; ``extra_users`` are added as they are (with full permissions)."""
    users: list[dict[str, Any]] = []
    permissions: list[dict[str, Any]] = []
    topic_permissions: list[dict[str, Any]] = []
    for extra in extra_users:
        users.append({**extra, "hashing_algorithm": HASHING_ALGORITHM, "limits": {}})
        permissions.append(
            {"user": extra["name"], "vhost": vhost, **dict.fromkeys(("configure", "write", "read"), ".*")}
        )
    for user in BROKER_USERS:
        users.append(
            {
                "name": user.name,
                "password_hash": password_hash(user.name, passwords[user.name]),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": list(user.tags),
                "limits": {},
            }
        )
        permissions.append({"user": user.name, "vhost": vhost, **user.permissions()})
        for exchange, write in user.topic_permissions().items():
            topic_permissions.append(
                {"user": user.name, "vhost": vhost, "exchange": exchange, "write": write, "read": EVERYTHING}
            )
    return {"users": users, "permissions": permissions, "topic_permissions": topic_permissions}


def ensure_secret(path: Path, mode: int = 0o600) -> str:
    """The secret in ``path``, created (random, 32 bytes, URL-safe) with ``mode`` when missing; its folder is made
    private (0700). Two processes creating it at once agree: one writes it (O_EXCL), the other reads it."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    path.chmod(mode)  # whatever the umask took away
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"secret file {path} is empty; delete it to have a new secret made")
    return value


def passwords(folder: Path, mode: int = 0o600) -> dict[str, str]:
    """Every broker user's password (by user name) from its file in ``folder``, created when missing."""
    return {user.name: ensure_secret(folder / password_file_name(user), mode) for user in BROKER_USERS}
