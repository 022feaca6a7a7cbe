"""``oms`` command line: dispatches each subcommand to the module that implements it.

Exit codes, the same for every command:

- 0: done (for a question, the answer is yes: ``check`` found nothing, ``decision --wait`` saw a final state);
- 1: a runtime failure or a "no" (a server away, an order missing, violations found, a wait that timed out);
  an unexpected exception prints one line, not a traceback (``OMS_DEBUG=1`` shows it);
- 2: a usage error: an unknown command, a bad argument (argparse), an unknown process for ``logs``;
- 130: interrupted (Ctrl-C), the shell's 128 + SIGINT;
- 141: the reader of stdout went away (``./oms help | head -3``): nothing more is printed, quietly, and the code
  is the shell's 128 + SIGPIPE, what any Unix tool killed by the closed pipe reports, so ``set -o pipefail``
  scripts see a truncated output as such.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from importlib import metadata

from common.settings import REPO_ROOT, ConfigurationError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
# The distribution name in pyproject.toml ([project] name): the version comes from its installed metadata.
DISTRIBUTION = "oms"

# subcommand -> (module, function, summary); each function is `(argv: list[str]) -> int`.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "infra": ("tools.infra.command", "main", "start | stop | status the local Postgres and RabbitMQ"),
    "test": ("tools.infra.runner", "run_tests", "start the servers, then run pytest (extra args go to pytest)"),
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
    "token": ("tools.token", "main", "issue an API token; `token keys rotate|list|remove` manage the signing keys"),
    "dlq": ("tools.dlq", "main", "inspect and replay dead-lettered messages"),
    "bench": ("tools.bench", "main", "measure CPU per order by process, throughput and latency (see README, Speed)"),
    "risk": ("tools.risk", "main", "risk limits, restricted symbols and the kill switch (show | set | halt ...)"),
    "bench-risk": ("tools.bench_risk", "main", "measure the cost of the risk checks per order"),
    "check": ("tools.check", "main", "check the invariants: fills vs confirmations, positions, outbox, stuck"),
    "anomalies": ("tools.anomalies", "main", "list execution reports that contradicted themselves or the order"),
    "order": ("tools.order", "main", "an order's story: show ID [--json] (events, reports, confirmations, position)"),
    "logs": ("tools.logs", "main", "the end of a process's log: logs PROCESS [-n N] [-f]"),
    "messages": ("tools.messagedoc", "main", "messages docs [--check]: write docs/messages.md from the catalogue"),
    "config": ("tools.configdoc", "main", "the settings: show (this environment's), docs (docs/configuration.md)"),
    "secrets": ("tools.secrets", "main", "secrets init: make the secret files docker-compose.yml reads (./secrets)"),
    "audit": ("tools.audit", "main", "security checks: code (bandit), deps (pip-audit), verify (the event chains)"),
    "data-keys": (
        "tools.data_keys",
        "main",
        "keys of client text encrypted at rest (notes, cancel reasons): status | rotate | reencrypt | remove",
    ),
    "db-roles": ("tools.db_roles", "main", "make the database roles of the role URLs and grant them (compose)"),
    "tls": ("tools.infra.tls", "main", "the local CA and certificate of `infra start --tls` / `up --tls`: init | show"),
    "version": ("tools.cli", "version", "print the version (also --version)"),
}


# The commands that connect to Postgres or RabbitMQ with the settings' URLs: against a local instance with TLS on
# (`./oms up --tls`) they get its TLS URLs unless the environment names others (tools/infra/tls.py), and against
# a local cluster (`./oms infra start --rabbit-nodes 3`) its nodes (tools/infra/rabbit_cluster.py).
SERVER_TOOLS = frozenset(
    {"decision", "migrate", "seed", "dlq", "bench", "risk", "bench-risk", "check", "anomalies", "order", "audit"}
    | {"data-keys", "config"}
)


def _instance_defaults() -> None:
    # Imported here: they load tools.infra, which the other commands do without.
    from tools.infra import rabbit_cluster, tls

    defaults = {**tls.tool_defaults(os.environ), **rabbit_cluster.tool_defaults(os.environ)}
    for variable, value in defaults.items():
        os.environ[variable] = value


def usage() -> str:
    """The command list."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: ./oms <command> [args]    (./oms help <command>, ./oms --version)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    return "\n".join(lines)


def project_version() -> str:
    """The installed distribution's version; pyproject.toml's when the project is not installed (a bare checkout)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
            version: str = tomllib.load(handle)["project"]["version"]
        return version


def version(argv: list[str]) -> int:
    """``oms version`` / ``oms --version``."""
    if argv in (["-h"], ["--help"]):
        print("usage: ./oms version (or ./oms --version): print the project's version")
        return EXIT_OK
    if argv:
        print(f"usage: ./oms version\noms version: unexpected arguments: {' '.join(argv)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{DISTRIBUTION} {project_version()}")
    return EXIT_OK


def _dispatch(args: list[str]) -> int:
    if not args:
        print(usage(), file=sys.stderr)
        return EXIT_USAGE
    if args[0] in {"-h", "--help", "help"}:
        if args[0] == "help" and args[1:]:
            return _dispatch([args[1], "--help"])  # ./oms help decision: the command's own help
        print(usage())
        return EXIT_OK
    if args[0] in {"-V", "--version"}:
        return version(args[1:])
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"oms: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    module_name, function, _ = COMMANDS[name]
    if name in SERVER_TOOLS:
        _instance_defaults()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the module exists but something it imports is missing: show the real error
        print(f"oms: `{name}` is not available yet ({module_name} does not exist)", file=sys.stderr)
        return EXIT_USAGE
    result: int = getattr(module, function)(rest)
    return result


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit codes are the module's docstring's."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("oms: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigurationError as exc:  # the line names the variable: a traceback would only hide it
        print(f"oms {args[0] if args else ''}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if os.environ.get("OMS_DEBUG"):
            raise
        command = args[0] if args else ""
        print(f"oms {command}: {type(exc).__name__}: {exc}".rstrip(), file=sys.stderr)
        print("oms: (OMS_DEBUG=1 ./oms ... shows the traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
