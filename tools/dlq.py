"""``oms dlq``: the dead-letter queues — list, show, replay, purge, and the audit of past replays.

    ./oms dlq list                                   every dead-letter queue and its depth
    ./oms dlq show --stage risk_gate --reason delivery_limit
    ./oms dlq replay --stage router --type RouteCancel --dry-run
    ./oms dlq replay --stage router --order-id <id> --yes
    ./oms dlq replay --yes                           every message of every dead-letter queue
    ./oms dlq replay --stage intake --background     as a job on the jobs worker
    ./oms dlq purge --stage intake --reason invalid  asks to type the queue name (or --yes)
    ./oms dlq history                                the audit: who replayed or purged what, when

A message counts as replayed or purged only once the queue, read again after the pass, no longer holds it:
an ack the broker did not apply is reported as such and not audited as done (services/jobs/deadletters.py).

Filters (all must match): ``--reason`` (a reason code: invalid, refused, delivery_limit, rejected, expired,
maxlen; or text found in the reason), ``--type`` (the message type), ``--order-id`` (correlation id or body
``orderId``), ``--message-id`` (repeatable), ``--limit``. Replay semantics: services/jobs/deadletters.py.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, select
from tqdm import tqdm

from common import bootstrap
from common.messaging.connection import connect_once
from common.settings import load_settings
from common.store.tables import dlq_replays
from services.jobs import deadletters
from services.jobs.deadletters import DeadLetterMessage, PassReport, Selection

# Below this many messages a progress bar is only noise.
PROGRESS_FROM = 50


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oms dlq", description="Inspect, replay and purge dead-lettered messages.")
    commands = parser.add_subparsers(dest="command", required=True)

    def where(sub: argparse.ArgumentParser) -> None:
        group = sub.add_mutually_exclusive_group()
        group.add_argument(
            "--stage", help="a stage (intake, risk_gate, router, execution_handler, settlement, venue_sim)"
        )
        group.add_argument("--queue", help="a dead-letter queue by name")

    def filters(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--reason", help="reason code or text in the reason (case-insensitive)")
        sub.add_argument("--type", help="message type, e.g. RiskCheck")
        sub.add_argument("--order-id", help="order id (correlation id or body orderId)")
        sub.add_argument("--message-id", action="append", default=[], help="a message id (repeatable)")
        sub.add_argument("--limit", type=int, help="act on at most this many messages per queue")

    sub = commands.add_parser("list", help="every dead-letter queue and its depth")
    sub.add_argument("--queue", action="append", default=[], help="also this queue (repeatable)")
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    sub = commands.add_parser("show", help="messages with headers, reason and body")
    where(sub)
    filters(sub)
    sub.add_argument("--body-chars", type=int, default=2000, help="cut bodies at this length (0: whole)")
    sub.add_argument("--json", action="store_true", help="one JSON object per message")

    for name, text in (
        ("replay", "send messages back to where they were first published"),
        ("purge", "remove messages for good"),
    ):
        sub = commands.add_parser(name, help=text)
        where(sub)
        filters(sub)
        sub.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
        sub.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        sub.add_argument("--actor", help="who is doing this, for the audit (default: the OS user)")
        sub.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name == "replay":
            sub.add_argument("--batch", type=int, default=100, help="messages per confirm/audit/ack round")
            sub.add_argument("--background", action="store_true", help="run it as a job on the jobs worker")

    sub = commands.add_parser("history", help="the audit of replays and purges, newest first")
    sub.add_argument("--limit", type=int, default=50)
    sub.add_argument("--run-id", help="only this run")
    sub.add_argument("--json", action="store_true")
    return parser


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(
        reason=args.reason,
        type=args.type,
        order_id=args.order_id,
        message_ids=frozenset(args.message_id),
        limit=args.limit,
    )


def _queues(args: argparse.Namespace) -> list[str]:
    if args.queue:
        return [args.queue]
    if args.stage:
        return [deadletters.queue_for_stage(args.stage)]
    return deadletters.dead_letter_queues()


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or getpass.getuser())


def _print_json(data: Any) -> None:
    print(json.dumps(data, default=str, indent=2))


@lru_cache(maxsize=1)
def _amqp_url() -> tuple[str, ...]:
    """The broker of this command's settings, every node of it (read once per command)."""
    return load_settings().infra.amqp_urls


@lru_cache(maxsize=1)
def _engine() -> Engine:
    """This command's database engine (made once per command)."""
    return bootstrap.engine(load_settings())


# ------------------------------------------------------------------------------------------------ commands


async def _depths(queues: list[str]) -> dict[str, int | None]:
    connection = await connect_once(_amqp_url(), deadletters.CONNECTION_NAME)
    try:
        return await deadletters.queue_depths(connection, queues)
    finally:
        await connection.close()


def cmd_list(args: argparse.Namespace) -> int:
    """Print each dead-letter queue with its depth."""
    queues = deadletters.dead_letter_queues() + [q for q in args.queue if q not in deadletters.dead_letter_queues()]
    depths = asyncio.run(_depths(queues))
    if args.json:
        _print_json([{"queue": q, "depth": d} for q, d in depths.items()])
        return 0
    width = max(len(q) for q in queues)
    print(f"{'QUEUE':<{width}}  DEPTH")
    for queue, depth in depths.items():
        print(f"{queue:<{width}}  {'absent' if depth is None else depth:>5}")
    return 0


def _print_message(message: DeadLetterMessage, body_chars: int) -> None:
    # Every field came off the wire: printed escaped, so NUL or a terminal escape sequence shows as text.
    # A field the message does not carry prints as "-" (not Python's "None").
    origin = (
        f"{message.original_exchange or '(default)'} / {message.original_routing_key}"
        if message.original_routing_key
        else "unknown"
    )
    headers = json.dumps(deadletters.to_plain(message.headers), default=str, sort_keys=True)
    body_format = message.body_format
    body = message.body_preview(body_chars or None)
    lines = [
        f"--- {message.queue}  message {message.message_id}  type {message.type or '-'}",
        f"    reason      {message.reason}: {message.detail}",
        f"    stage       {message.stage or '-'}    first sent to {origin}",
        f"    correlation {message.correlation_id or '-'}    order {message.order_id or '-'}",
        f"    dead at     {message.dead_lettered_at or '-'}    broker dead-letterings {message.deaths}",
        f"    headers     {headers}",
        f"    body        {body}"
        if body_format == "json"
        else f"    body ({body_format}, {len(message.body)} bytes) {body}",
    ]
    for line in lines:
        print(deadletters.printable(line))


def cmd_show(args: argparse.Namespace) -> int:
    """Print the matching messages of each queue (nothing is removed)."""
    selection = _selection(args)
    engine = _engine()
    shown = 0
    for queue in _queues(args):
        depth, messages = asyncio.run(deadletters.show(_amqp_url(), queue, selection, engine))
        shown += len(messages)
        if args.json:
            for message in messages:
                # ensure_ascii (the default) escapes NUL and lone surrogates: one clean line per message.
                print(json.dumps(message.as_dict(args.body_chars or None), default=str))
            continue
        if depth is None:
            continue
        print(f"== {queue}: depth {depth}, {len(messages)} matching")
        for message in messages:
            _print_message(message, args.body_chars)
    if not args.json:
        print(f"{shown} message(s) shown")
    return 0


def _confirm(question: Callable[[], str], expected: str = "y") -> bool:
    """Ask ``question()`` (worked out only when there is someone to ask); True when answered ``expected``."""
    if not sys.stdin.isatty():
        print("not a terminal: pass --yes to confirm", file=sys.stderr)
        return False
    answer = input(f"{question()} ").strip()
    return answer.lower() == expected.lower() if expected == "y" else answer == expected


def _matching(args: argparse.Namespace, queues: list[str]) -> dict[str, int]:
    """How many messages of each queue the filters select now (queues that do not exist left out)."""
    counts: dict[str, int] = {}
    for queue in queues:
        depth, messages = asyncio.run(deadletters.show(_amqp_url(), queue, _selection(args), _engine()))
        if depth is not None:
            counts[queue] = len(messages)
    return counts


def _touching(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    where = ", ".join(f"{n} in {q}" for q, n in counts.items() if n) or "none anywhere"
    return f"{total} message(s) ({where})"


def _run_pass(
    args: argparse.Namespace,
    engine: Engine,
    queue: str,
    run: Callable[..., Any],
) -> PassReport:
    bar: tqdm[Any] | None = None

    def on_depth(depth: int) -> None:
        nonlocal bar
        if depth >= PROGRESS_FROM:
            bar = tqdm(total=depth, desc=queue, unit="msg", file=sys.stderr, disable=None)

    def progress(count: int) -> None:
        if bar is not None:
            bar.update(count)

    try:
        report: PassReport = asyncio.run(
            run(
                _amqp_url(),
                engine,
                queue,
                _selection(args),
                actor=_actor(args),
                dry_run=args.dry_run,
                progress=progress,
                on_depth=on_depth,
                **({"batch_size": args.batch} if hasattr(args, "batch") else {}),
            )
        )
    finally:
        if bar is not None:
            bar.close()
    return report


def _summarise(report: PassReport, verb: str) -> None:
    if report.dry_run:
        print(f"{report.queue}: would {verb} {report.selected} of {report.depth} message(s):")
        for message in report.messages:
            target = f"{message.original_exchange or '(default)'} / {message.original_routing_key}"
            print(deadletters.printable(f"    {message.message_id}  {message.type}  {message.reason}  -> {target}"))
        return
    done = verb.removesuffix("e") + "ed"  # replayed, purged
    line = f"{report.queue}: {done} {report.done} of {report.selected} selected ({report.depth} in the queue)"
    if report.failed:
        line += f"; {report.failed} failed and stay in the queue"
    if report.not_removed:
        # Acked, yet there when the queue was read again: not counted above, and audited as what they are.
        kept = "audited as FAILED (republished)" if report.action == "REPLAY" else "not audited"
        line += f" ({report.not_removed} of them acked but still there, {kept})"
    print(f"{line}  [run {report.run_id}]")
    for message_id, error in report.errors.items():
        print(deadletters.printable(f"    failed {message_id}: {error}"))


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the selected messages (or enqueue the replay as a job)."""
    queues = _queues(args)
    if args.background:
        from services.jobs.actors import replay_dead_letters

        message = replay_dead_letters.send(
            queues=queues,
            reason=args.reason,
            type=args.type,
            order_id=args.order_id,
            message_ids=list(args.message_id),
            limit=args.limit,
            actor=_actor(args),
        )
        print(f"replay enqueued as job {message.message_id}; follow it in job_runs and `oms dlq history`")
        return 0
    if (
        not args.dry_run
        and not args.yes
        and not _confirm(lambda: f"Replay {_touching(_matching(args, queues))} now selected? [y/N]")
    ):
        print("nothing done")
        return 1
    return _passes(args, queues, deadletters.replay, "replay")


def cmd_purge(args: argparse.Namespace) -> int:
    """Remove the selected messages for good (each with an audit row)."""
    if not (args.queue or args.stage):
        print("purge needs --stage or --queue", file=sys.stderr)
        return 2
    queue = _queues(args)[0]
    if (
        not args.dry_run
        and not args.yes
        and not _confirm(
            lambda: f"Purge {_touching(_matching(args, [queue]))} for good? Type the queue name to confirm:", queue
        )
    ):
        print("nothing done")
        return 1
    return _passes(args, [queue], deadletters.purge, "purge")


def _passes(args: argparse.Namespace, queues: list[str], run: Callable[..., Any], verb: str) -> int:
    engine = _engine()
    failed = 0
    reports = []
    for queue in queues:
        try:
            report = _run_pass(args, engine, queue, run)
        except LookupError as exc:  # no such queue
            if args.queue or args.stage:
                print(f"{queue}: {exc}", file=sys.stderr)
                failed += 1
            continue
        reports.append(report)
        failed += report.failed
        if not args.json:
            _summarise(report, verb)
    if args.json:
        _print_json([r.as_dict() for r in reports])
    return 1 if failed else 0


def cmd_history(args: argparse.Namespace) -> int:
    """Print the audit rows, newest first."""
    query = select(dlq_replays).order_by(dlq_replays.c.id.desc()).limit(args.limit)
    if args.run_id:
        query = query.where(dlq_replays.c.run_id == args.run_id)
    with _engine().connect() as connection:
        rows = [dict(row) for row in connection.execute(query).mappings()]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no audit rows for run {args.run_id}" if args.run_id else "no replays or purges recorded yet")
        return 0
    for row in rows:
        target = f"{row['target_exchange'] or '(default)'} / {row['target_routing_key']}"
        print(
            f"{row['created_at']:%Y-%m-%d %H:%M:%S%z}  {row['actor']:<16} {row['action']:<7} {row['outcome']:<8} "
            f"{row['queue']}  {row['message_id']}  {row['message_type']}  -> {target}  [run {row['run_id']}]"
        )
        if row["detail"]:  # why a FAILED row failed (or that its pass stopped before checking its ack)
            print(f"    {row['detail']}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": cmd_list,
    "show": cmd_show,
    "replay": cmd_replay,
    "purge": cmd_purge,
    "history": cmd_history,
}


def main(argv: list[str]) -> int:
    """Entry point of ``oms dlq``."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ValueError as exc:  # an unknown stage, a bad filter
        print(f"oms dlq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
