"""Write the public AMQP contract, ``docs/messages.md``, from the message catalogue (common/messages/).

    ./oms messages docs [--check]          (or: python -m tools.messagedoc [--check])

Every kind's exchange, routing key, type, producers and consumers, its schema's fields (type, required, notes:
common/contracts.py) and its example come from the catalogue; the queues and their bindings from the topology.
``--check`` exits 1 when the committed page is not what the catalogue makes (tests/unit/test_message_doc.py
runs it, so the page cannot fall behind the code).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from marshmallow import Schema, fields, validate

from common.messages.catalogue import KINDS, RETIRED_KINDS, Direction, MessageKind
from common.messages.exchanges import DIRECT_EXCHANGES, EXCHANGE_SUMMARIES, TOPIC_EXCHANGES
from common.messages.headers import ACCOUNT_HEADER, HEADER_SUMMARIES
from common.messages.partitions import PARTITIONS
from common.messaging.batch import CARRIER_TYPE
from common.messaging.topology import STAGE_QUEUES, VENUE_QUEUE, StageQueue, all_stage_queues
from common.settings import REPO_ROOT
from tools.generated import write_or_check

DOCUMENT = REPO_ROOT / "docs" / "messages.md"
COMMAND = "./oms messages docs"

PREAMBLE = f"""# The OMS message contract (AMQP)

<!-- Generated from common/messages/ by `{COMMAND}` (python -m tools.messagedoc): edit the catalogue, not this
page. tests/unit/test_message_doc.py fails when the two differ. -->

Other services and operators rely on this. The message catalogue (`common/messages/catalogue.py`) names every
message kind; the marshmallow schemas in `common/contracts.py` are the executable form of the bodies: every body a
stage consumes is validated with them, and a body that fails goes to the stage's dead-letter queue with the reason
in the `x-oms-error` header.

Every message: JSON (`content_type: application/json`), persistent, with a unique `message_id`, a
`correlation_id` (the order id where there is one, the decision id for a decision) and a `type` property.
Numbers are exact decimals (write `100.25`, never a float that rounds); times are ISO 8601 (RFC 3339) with an
offset; the OMS writes UTC as `Z` (`2026-11-30T09:30:00.123456Z`) and reads any offset.
Unknown fields are ignored, so fields may be added without breaking anyone. A consumer must treat a
duplicate (same `message_id`) as normal: the OMS publishes at least once.
"""

CARRIERS = f"""Between stages, the records a batch publishes to one of these routing keys travel together in one AMQP
message, a carrier: type `{CARRIER_TYPE}`, header `x-oms-batch` (the number of records), message id
`batch:<uuid>`, body a JSON array of `{{"id", "type", "cid", "headers", "body"}}` where `id`, `type`, `cid`
(correlation id) and `headers` are the record's own properties and `body` its JSON text as a string. A stage
takes a record in a carrier exactly as the plain message it would otherwise be (the outbox relay republishes
rows one by one): its inbox claims the record's id, it is validated alone, and a record that is refused or fails
at every delivery goes to the stage's DLQ alone, as a plain message with its reason, while the rest of its
carrier is handled. A hop costs about 0.46 ms of CPU per AMQP message and 0.013 ms per record when 50 ride
together. Public contracts never see carriers."""

DEAD_LETTERS = """Each stage queue is a quorum queue with `x-delivery-limit`, dead-lettering at least once to
`oms.<stage>.dlq` through the `oms.dlx` exchange (the venue's to `venue_sim.orders.dlq`). A dead letter keeps
its message id, type, correlation id, body and headers, and gains either `x-death` (the broker's: reason
`delivery_limit` for a message whose handling kept failing) or `x-oms-error` (the OMS's: the validation
messages or the reason), with `x-oms-stage`, `x-oms-original-exchange`, `x-oms-original-routing-key` and
`x-oms-dead-lettered-at`. `./oms dlq` lists, shows, replays (to the original exchange and routing key, same
message id) and purges them."""

_SECTIONS = (
    (Direction.IN, "Into the OMS"),
    (Direction.OUT, "Out of the OMS"),
    (Direction.INTERNAL, "Between the stages (operators see these in the management UI)"),
    (Direction.FEED, "Market data"),
)


def _code(text: str) -> str:
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_of(field: fields.Field[object]) -> str:
    for validator in field.validators:
        if isinstance(validator, validate.OneOf):
            return " | ".join(_code(str(choice)) for choice in validator.choices)
    if isinstance(field, fields.Nested):
        return "object"
    if isinstance(field, fields.Decimal):
        return "number"
    if isinstance(field, fields.Boolean):
        return "boolean"
    if isinstance(field, fields.Integer):
        return "integer"
    if isinstance(field, fields.DateTime):
        return "date-time"
    if isinstance(field, fields.Date):
        return "date"
    text = "string"
    for validator in field.validators:
        if isinstance(validator, validate.Length) and validator.max is not None:
            text += f" (≤ {validator.max})"
    return text


def _rows(schema: Schema, prefix: str = "") -> Iterator[list[str]]:
    for name, field in schema.fields.items():
        wire = prefix + (field.data_key or name)
        required = str(field.metadata.get("required", "yes" if field.required else "no"))
        yield [_code(wire), _type_of(field), required, str(field.metadata.get("description", ""))]
        if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
            yield from _rows(field.schema, wire + ".")


def field_table(schema: Schema) -> list[str]:
    """The schema's fields as a Markdown table (nested objects' fields as ``parent.child``)."""
    lines = ["| field | type | required | notes |", "| --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in _rows(schema)]
    return lines


def _queue_of(kind: MessageKind) -> str:
    if kind.stage is not None:
        return f" (queue `{STAGE_QUEUES[kind.stage].name}`)"
    if kind.routing_key in VENUE_QUEUE.routing_keys:
        return f" (here the simulated venue, queue `{VENUE_QUEUE.name}`)"
    return ""


def _words(type_name: str) -> str:
    words = re.findall(r"[A-Z][a-z]*", type_name)
    return " ".join([words[0], *(w.lower() for w in words[1:])]) if words else type_name


def kind_section(kind: MessageKind) -> list[str]:
    """One kind: where it travels, who sends and takes it, its fields, notes and example."""
    assert kind.schema is not None and kind.example is not None
    key = f"routing key {_code(kind.routing_key)}"
    if kind.binding is not None:
        key += f" (subscribers bind {_code(kind.binding)})"
    lines = [
        f"### {_words(kind.type)}: `{kind.type}`",
        "",
        f"Exchange {_code(kind.exchange)}, {key}, type {_code(kind.type)}.",
        f"Sent by {'; '.join(kind.producers)}. Taken by {'; '.join(kind.consumers)}{_queue_of(kind)}.",
        "",
        kind.summary,
        "",
        *field_table(kind.schema),
        "",
    ]
    for note in kind.notes:
        lines += [note, ""]
    lines += ["Example:", "", "```json", kind.example, "```", ""]
    return lines


def _retired(exchange: str) -> list[str]:
    retired = [k for k in RETIRED_KINDS if k.exchange == exchange]
    if not retired:
        return []
    lines = [f"Retired on {_code(exchange)}:", "", "| routing key | type | |", "| --- | --- | --- |"]
    lines += [f"| {_code(k.routing_key)} | {_code(k.type)} | {k.retired} |" for k in retired]
    return [*lines, ""]


def _binding_cell(queue: StageQueue) -> str:
    by_source: dict[str, list[str]] = {}
    for source, key in queue.bindings():
        by_source.setdefault(source, []).append(key)
    cells = []
    for source, keys in by_source.items():
        if source == queue.hash_exchange:
            hashed = ", ".join(_code(key) for key in queue.hashed_keys)
            on = ", ".join(f"{k} `{v}`" for k, v in queue.hash_arguments.items())
            cells.append(f"{hashed} through {_code(source)} (consistent hash, {on})")
        else:
            cells.append(f"{_code(source)}: " + ", ".join(_code(key) for key in keys))
    return "; ".join(cells)


def queues_section() -> list[str]:
    """The durable queues the OMS declares, their bindings and dead-letter queues."""
    lines = [
        "## Queues",
        "",
        "| queue | takes | dead letters |",
        "| --- | --- | --- |",
    ]
    for queue in (*all_stage_queues(), VENUE_QUEUE):
        lines.append(f"| {_code(queue.name)} | {_binding_cell(queue)} | {_code(queue.dead_letter_name)} |")
    lines += [
        "",
        f"Each stage's input is split into {PARTITIONS} partition queues (quorum, single active consumer), and "
        "each replica of the stage consumes its share of them (`./oms up --replicas`): an order's messages, or an "
        "account's, always land in the same partition, so one replica handles them, in order. The OMS's own "
        "hand-overs name their partition in the routing key (`risk.check.2`; the bare key goes to partition 0); "
        "messages from other services are spread by a consistent-hash exchange: an execution report by its "
        f"correlation id (the order id), a decision by its `{ACCOUNT_HEADER}` header, the account (a decision "
        "without one goes where every other such decision goes: one partition, in order).",
        "",
        f"`{VENUE_QUEUE.name}` is the simulated venue's; a real broker integration service binds its own queue to "
        "the same keys instead (`./oms up --no-venue`). Subscribers (the risk gate's price feed, the gRPC update "
        "stream) bind exclusive, auto-deleted queues of their own.",
        "",
    ]
    return lines


def document() -> str:
    """The whole page."""
    lines = [PREAMBLE, "## Exchanges", "", "| exchange | type | carries |", "| --- | --- | --- |"]
    for name in (*TOPIC_EXCHANGES, *DIRECT_EXCHANGES):
        exchange_type = "topic" if name in TOPIC_EXCHANGES else "direct"
        lines.append(f"| {_code(name)} | {exchange_type} | {EXCHANGE_SUMMARIES[name]} |")
    lines.append("")
    for direction, title in _SECTIONS:
        lines += [f"## {title}", ""]
        exchanges_seen: list[str] = []
        for kind in KINDS:
            if kind.direction is direction:
                lines += kind_section(kind)
                exchanges_seen.append(kind.exchange)
        for exchange in dict.fromkeys(exchanges_seen):
            lines += _retired(exchange)
        if direction is Direction.INTERNAL:
            lines += [CARRIERS, ""]
    lines += queues_section()
    lines += ["## Headers", "", "| header | meaning |", "| --- | --- |"]
    lines += [f"| {_code(name)} | {meaning} |" for name, meaning in HEADER_SUMMARIES.items()]
    lines += ["", "## Dead letters", "", DEAD_LETTERS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/messages.md, or with ``--check`` say whether it is up to date (exit 1 if not)."""
    parser = argparse.ArgumentParser(prog="oms messages", description="the AMQP contract page, docs/messages.md")
    parser.add_argument("what", nargs="?", choices=["docs"], default="docs", help="docs: write docs/messages.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/messages.md is out of date")
    args = parser.parse_args(argv)
    return write_or_check(DOCUMENT.relative_to(REPO_ROOT), document(), check=args.check, regenerate=COMMAND)


if __name__ == "__main__":
    raise SystemExit(main())
