"""``oms infra start|stop|status [--docker]``."""

from __future__ import annotations

import argparse
import sys

from tools.infra.servers import ensure_started, status, stop
from tools.infra.settings import InfraError, InfraUrls, ServerSettings


def _print_urls(urls: InfraUrls) -> None:
    print(f"  database    {urls.database_url}")
    print(f"  amqp        {urls.amqp_url}")
    print(f"  management  {urls.management_url}  (login guest / guest)")


def main(argv: list[str]) -> int:
    """``oms infra start|stop|status [--docker]``; ``status`` exits 3 when a server is not running."""
    parser = argparse.ArgumentParser(prog="oms infra", description="Local Postgres and RabbitMQ servers.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--docker", action="store_true", default=None, help="use docker compose (needs a Docker engine)"
    )
    args = parser.parse_args(argv)
    try:
        settings = ServerSettings.from_env()
        if args.action == "start":
            urls = ensure_started(docker=args.docker, verbose=True)
            print(f"servers are up (data in {settings.data_dir}):")
            _print_urls(urls)
        elif args.action == "stop":
            for line in stop(docker=args.docker):
                print(line)
        else:
            states = status(docker=args.docker)
            for state in states:
                print(f"{state.name}: {state.detail}")
            _print_urls(settings.urls)
            return 0 if all(s.running for s in states) else 3
    except InfraError as exc:
        print(f"oms infra {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
