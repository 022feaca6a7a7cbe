"""The stage topology of ops/rabbitmq-definitions.json, generated from common/messaging/topology.py.

The broker loads that file at boot and the workers (with ``OMS_AMQP_DECLARE_TOPOLOGY=false``) only look their
queues up, so the file must say exactly what the code declares: every partition queue with its arguments, the
dead-letter queues, the consistent-hash exchanges and every binding. ``python -m tools.infra.definitions``
rewrites the file's stage part (the jobs queues, the policies and the rest are kept as they are);
tests/integration/test_broker_definitions.py checks it is current and that a broker takes it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from common.messages.exchanges import DEAD_LETTER_EXCHANGE, DIRECT_EXCHANGES, TOPIC_EXCHANGES
from common.messaging.topology import (
    HASH_EXCHANGE_TYPE,
    VENUE_QUEUE,
    StageQueue,
    all_stage_queues,
    dead_letter_queue_arguments,
    stage_queue_arguments,
)
from tools.infra.rabbitmq import DEFINITIONS_FILE

DEFAULT_DELIVERY_LIMIT = 5  # OMS_DELIVERY_LIMIT's default; a deployment that changes it regenerates the file
VHOST = "/"


def _queue(name: str, arguments: Any) -> dict[str, Any]:
    return {"name": name, "vhost": VHOST, "durable": True, "auto_delete": False, "arguments": dict(arguments)}


def _binding(source: str, destination: str, key: str, destination_type: str = "queue") -> dict[str, Any]:
    return {
        "source": source,
        "vhost": VHOST,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": key,
        "arguments": {},
    }


def _exchange(name: str, kind: str, arguments: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": VHOST,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": arguments or {},
    }


def stage_topology(delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> dict[str, list[dict[str, Any]]]:
    """The exchanges, queues and bindings of every stage (all partitions) and of the venue."""
    exchanges = [_exchange(name, "topic") for name in TOPIC_EXCHANGES]
    exchanges += [_exchange(name, "direct") for name in DIRECT_EXCHANGES]
    queues: list[dict[str, Any]] = []
    bindings: list[dict[str, Any]] = []
    seen_dead_letters: set[str] = set()
    queue: StageQueue
    for queue in [*all_stage_queues(), VENUE_QUEUE]:
        if queue.dead_letter_name not in seen_dead_letters:
            seen_dead_letters.add(queue.dead_letter_name)
            queues.append(_queue(queue.dead_letter_name, dead_letter_queue_arguments() or {}))
            bindings.append(_binding(DEAD_LETTER_EXCHANGE, queue.dead_letter_name, queue.dead_letter_name))
        queues.append(_queue(queue.name, stage_queue_arguments(queue, delivery_limit) or {}))
        if queue.hashed_keys and queue.partitions > 1 and queue.partition == 0:
            exchanges.append(_exchange(queue.hash_exchange, HASH_EXCHANGE_TYPE, queue.hash_arguments))
            bindings += [_binding(queue.exchange, queue.hash_exchange, key, "exchange") for key in queue.hashed_keys]
        bindings += [_binding(source, queue.name, key) for source, key in queue.bindings()]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def _is_stage_part(entry: dict[str, Any], names: set[str]) -> bool:
    return entry.get("name") in names or entry.get("destination") in names


def render(document: dict[str, Any], delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> dict[str, Any]:
    """``document`` with its stage topology replaced by the generated one (everything else kept, in place)."""
    generated = stage_topology(delivery_limit)
    names = {e["name"] for part in ("exchanges", "queues") for e in generated[part]}
    names |= {b["destination"] for b in generated["bindings"]}
    # Entries of the stage topology a previous version generated (an older partition count, say) go too.
    stale = {q["name"] for q in document.get("queues", []) if str(q["name"]).startswith(("oms.", "venue_sim."))}
    stale -= {q["name"] for q in document.get("queues", []) if str(q["name"]).startswith("oms.jobs")}
    out = dict(document)
    for part in ("exchanges", "queues", "bindings"):
        kept = [e for e in document.get(part, []) if not _is_stage_part(e, names | stale)]
        out[part] = generated[part] + kept
    return out


def main(argv: list[str]) -> int:
    """Rewrite ops/rabbitmq-definitions.json (``--check``: exit 1 if it is not current)."""
    current = json.loads(DEFINITIONS_FILE.read_text())
    text = json.dumps(render(current), indent=2) + "\n"
    if "--check" in argv:
        if DEFINITIONS_FILE.read_text() != text:
            print(f"{DEFINITIONS_FILE} is not current: python -m tools.infra.definitions", file=sys.stderr)
            return 1
        return 0
    DEFINITIONS_FILE.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
