"""``oms`` command line: dispatches each subcommand to the module that implements it."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, summary); each function is `(argv: list[str]) -> int`.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "infra": ("tools.infra", "main", "start | stop | status the local Postgres and RabbitMQ"),
    "test": ("tools.infra", "run_tests", "start the servers, then run pytest (extra args go to pytest)"),
    "up": (
        "tools.up",
        "main",
        "the whole system: servers, schema, every worker, the API and the simulated venue",
    ),
    "down": ("tools.up", "down", "stop what `up --detach` started, and the servers"),
    "ps": ("tools.up", "ps", "the processes `up` supervises: pid, state, restarts, uptime"),
    "decision": ("tools.decision", "main", "send a trade decision as the strategy service does"),
    "migrate": ("tools.migrate", "main", "apply database migrations (Alembic)"),
    "seed": ("tools.seed", "main", "load sample data"),
    "token": ("tools.token", "main", "issue an API token"),
    "dlq": ("tools.dlq", "main", "inspect and replay dead-lettered messages"),
    "bench": ("tools.bench", "main", "measure throughput"),
    "risk": ("tools.risk", "main", "risk limits, restricted symbols and the kill switch (show | set | halt ...)"),
    "bench-risk": ("tools.bench_risk", "main", "measure the cost of the risk checks per order"),
    "check": ("tools.check", "main", "check the invariants: fills vs confirmations, positions, outbox, stuck"),
    "anomalies": ("tools.anomalies", "main", "list execution reports that contradicted themselves or the order"),
}


def usage() -> str:
    lines = ["usage: ./oms <command> [args]", "", "commands:"]
    lines += [f"  {name:<8} {summary}" for name, (_, _, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"oms: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the module exists but something it imports is missing: show the real error
        print(f"oms: `{name}` is not available yet ({module_name} does not exist)", file=sys.stderr)
        return 2
    result: int = getattr(module, function)(rest)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
