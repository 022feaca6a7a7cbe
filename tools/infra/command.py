"""``oms infra start|stop|status [--docker]``."""

from __future__ import annotations

import argparse
import sys

from tools.infra import rabbit_cluster
from tools.infra.servers import ensure_started, status, stop
from tools.infra.settings import InfraError, InfraUrls, ServerSettings
from tools.infra.tls import add_tls_arguments


def _print_urls(urls: InfraUrls) -> None:
    print(f"  database    {urls.database_url}")
    print(f"  amqp        {urls.amqp_url}")
    if urls.amqp_nodes:
        print(f"  amqp nodes  {urls.amqp_nodes}  (OMS_AMQP_NODES)")
    print(f"  management  {urls.management_url}  (login guest / guest)")


def _node(words: list[str], settings: ServerSettings) -> str:
    """``oms infra node stop|start|kill N``: one node of the local cluster (what failure drills do by hand)."""
    actions = {"stop": rabbit_cluster.stop_node, "start": rabbit_cluster.start_node, "kill": rabbit_cluster.kill_node}
    if len(words) != 2 or words[0] not in actions or not words[1].isdigit():
        raise InfraError("usage: oms infra node stop|start|kill N")
    result = actions[words[0]](int(words[1]), settings)
    return f"node {words[1]}: {'killed (pid ' + str(result) + ')' if words[0] == 'kill' else result}"


def main(argv: list[str]) -> int:
    """``oms infra start|stop|status [--docker] [--tls|--no-tls] [--rabbit-nodes N]`` and ``oms infra node
    stop|start|kill N``; ``status`` exits 3 when a server is not running."""
    parser = argparse.ArgumentParser(prog="oms infra", description="Local Postgres and RabbitMQ servers.")
    parser.add_argument("action", choices=["start", "stop", "status", "node"])
    parser.add_argument(
        "node_args",
        nargs="*",
        metavar="stop|start|kill N",
        help="node: stop, start or kill -9 RabbitMQ node N of the local cluster (tools/infra/rabbit_cluster.py)",
    )
    parser.add_argument(
        "--rabbit-nodes",
        type=int,
        default=None,
        help="start: RabbitMQ as a cluster of N nodes on this host (1: one node); remembered for later starts",
    )
    parser.add_argument(
        "--docker", action="store_true", default=None, help="use docker compose (needs a Docker engine)"
    )
    add_tls_arguments(
        parser, "start: TLS only (local CA, ./oms tls show), plaintext refused; remembered for later starts"
    )
    args = parser.parse_args(argv)
    try:
        settings = ServerSettings.from_env()
        if args.action == "start":
            urls = ensure_started(docker=args.docker, verbose=True, tls_on=args.tls, rabbit_nodes=args.rabbit_nodes)
            print(f"servers are up (data in {settings.data_dir}):")
            _print_urls(urls)
        elif args.action == "node":
            print(_node(args.node_args, settings))
        elif args.action == "stop":
            for line in stop(docker=args.docker):
                print(line)
        else:
            states = status(docker=args.docker)
            for state in states:
                print(f"{state.name}: {state.detail}")
            print(f"tls: {'on' if settings.tls else 'off'}")
            _print_urls(rabbit_cluster.broker_urls(settings))
            return 0 if all(s.running for s in states) else 3
    except InfraError as exc:
        print(f"oms infra {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
