"""``oms up``: the whole system on this machine — servers, schema, demo data, every worker, front end, venue."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
import urllib.parse
from pathlib import Path

from common.config import REPO_ROOT, load_settings
from tools import infra, migrate, seed
from tools.processes import STAGES, ProcessSpec, Supervisor, system
from tools.sandbox import consumers_ready

FIRST_METRICS_PORT = 9101


def _pid_file() -> Path:
    return load_settings().data_dir / "run" / "pids.json"


def _specs(args: argparse.Namespace) -> list[ProcessSpec]:
    specs = system(with_venue=not args.no_venue, with_api=not args.no_api, with_jobs=not args.no_jobs)
    return [
        ProcessSpec(s.name, s.module, s.args, {**s.env, "OMS_METRICS_PORT": str(FIRST_METRICS_PORT + i)})
        for i, s in enumerate(specs)
    ]


def main(argv: list[str]) -> int:
    """Entry point of ``oms up``."""
    parser = argparse.ArgumentParser(prog="oms up", description="bring up the whole system locally")
    parser.add_argument("--no-venue", action="store_true", help="leave the broker exchange to a real broker service")
    parser.add_argument("--no-api", action="store_true", help="do not start the REST/gRPC front end")
    parser.add_argument("--no-jobs", action="store_true", help="do not start the jobs worker and scheduler")
    parser.add_argument("--detach", action="store_true", help="start in the background and return (oms down)")
    args = parser.parse_args(argv)

    settings = load_settings()
    urls = infra.ensure_started()
    migrate.upgrade(urls.database_url)
    seed.main(["--url", urls.database_url])

    env = {"OMS_DATABASE_URL": urls.database_url, "OMS_AMQP_URL": urls.amqp_url}
    log_dir = settings.data_dir / "logs"
    supervisor = Supervisor(env, log_dir, REPO_ROOT)
    specs = _specs(args)
    supervisor.start_all(specs)
    vhost = urllib.parse.unquote(urllib.parse.urlparse(urls.amqp_url).path.lstrip("/")) or "/"
    missing = consumers_ready(urls.management_url, vhost, [f"oms.{s}" for s in STAGES], timeout=60)
    dead = supervisor.dead()
    if missing or dead:
        for running in dead:
            tail = supervisor.tail(running.spec.name)
            print(f"!! {running.spec.name} exited; last lines of {running.log_path}:\n{tail}")
        print(f"!! stage queues without a consumer: {', '.join(missing) or 'none'}")
        supervisor.stop_all()
        return 1

    print(
        f"""
OMS is up.
  REST API          http://127.0.0.1:{settings.rest_port}/orders   (OpenAPI: /openapi.json, browse: /docs)
  gRPC              127.0.0.1:{settings.grpc_port}   (package trading.order.v1, reflection on)
  RabbitMQ UI       {urls.management_url}   (guest / guest, from this machine only)
  Postgres          {urls.database_url}
  AMQP              {urls.amqp_url}
  Logs (JSON)       {log_dir}/<process>.log
  Metrics           http://127.0.0.1:{FIRST_METRICS_PORT}..{FIRST_METRICS_PORT + len(specs) - 1}/metrics
  Processes         {", ".join(s.name for s in specs)}
Send a trade decision:  ./oms decision --account ACC-001 --symbol AAPL --side BUY --type MARKET --quantity 100
Mint a token:           ./oms token --sub me --accounts ACC-001 --scopes orders:read,orders:write
"""
    )
    if args.detach:
        pid_file = _pid_file()
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(json.dumps({r.spec.name: r.popen.pid for r in supervisor.running.values()}))
        print(f"running in the background; stop with ./oms down (pids in {pid_file})")
        return 0
    return _supervise(supervisor)


def _supervise(supervisor: Supervisor) -> int:
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print("Ctrl-C stops the processes (the servers keep running; ./oms infra stop stops them).")
    restarts: dict[str, int] = {}
    while not stopping:
        for running in supervisor.dead():
            name = running.spec.name
            restarts[name] = restarts.get(name, 0) + 1
            print(f"{name} exited with {running.popen.returncode}; restarting (#{restarts[name]})")
            running.log_file.close()
            supervisor.start(running.spec)
        time.sleep(0.5)  # supervisor tick
    supervisor.stop_all()
    return 0


def down(argv: list[str]) -> int:
    """Entry point of ``oms down``: stop processes started with ``oms up --detach``, and the servers."""
    parser = argparse.ArgumentParser(prog="oms down")
    parser.add_argument("--keep-infra", action="store_true", help="leave Postgres and RabbitMQ running")
    args = parser.parse_args(argv)
    pid_file = _pid_file()
    if pid_file.exists():
        for name, pid in json.loads(pid_file.read_text()).items():
            try:
                os.kill(pid, signal.SIGTERM)
                print(f"stopped {name} ({pid})")
            except ProcessLookupError:
                pass
        pid_file.unlink()
    if not args.keep_infra:
        infra.stop()
    return 0
