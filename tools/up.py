"""``oms up``: the whole system on this machine — servers, schema, demo data, every worker, front end, venue."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from sqlalchemy.engine import make_url

from common.messages.partitions import PARTITIONS
from common.messaging.topology import all_stage_queues
from common.settings import REPO_ROOT, Settings, load_settings
from tools import infra, migrate, seed, supervise
from tools.infra import brokerusers, tls
from tools.processes import ProcessSpec, Supervisor, kind_of, parse_replicas, system, with_replicas
from tools.sandbox import consumers_ready

FIRST_METRICS_PORT = 9101  # OMS_METRICS_PORT_BASE changes it (two instances on one host)
READY_SECONDS = 60.0
# Long enough for the supervisor to SIGTERM its children, wait for them (20 s) and SIGKILL the rest.
DOWN_TIMEOUT_SECONDS = 45.0


def _legacy_pid_file() -> Path:
    return load_settings().infra.data_dir / "run" / "pids.json"


def metrics_port_base() -> int:
    """The first metrics port (``OMS_METRICS_PORT_BASE``, default 9101)."""
    raw = os.environ.get("OMS_METRICS_PORT_BASE", str(FIRST_METRICS_PORT))
    try:
        base = int(raw)
    except ValueError:
        raise SystemExit(f"oms up: OMS_METRICS_PORT_BASE must be a port number, not {raw!r}") from None
    return base


def _replicas_argument(text: str) -> dict[str, int]:
    try:
        return parse_replicas(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _specs(args: argparse.Namespace) -> list[ProcessSpec]:
    specs = system(with_venue=not args.no_venue, with_api=not args.no_api, with_jobs=not args.no_jobs)
    specs = with_replicas(specs, args.replicas)
    # Each process keeps its slot in the full list, so leaving one out (--no-venue) moves no other port; the
    # extra replicas take the slots after it.
    full = system(with_venue=True, with_api=True, with_jobs=True)
    slots = {spec.name: i for i, spec in enumerate(full)}
    extra = iter(range(len(full), len(full) + len(specs)))
    base = metrics_port_base()
    # Each process logs in to RabbitMQ as its kind's user (tools/infra/brokerusers.py), not as guest: the
    # user's name and password file, which `infra.ensure_started` wrote under the data folder.
    return [
        ProcessSpec(
            s.name,
            s.module,
            s.args,
            {
                **s.env,
                "OMS_METRICS_PORT": str(base + (slots[s.name] if s.name in slots else next(extra))),
                **infra.process_env(kind_of(s.name)),
            },
        )
        for s in specs
    ]


def _metrics_ports(specs: list[ProcessSpec]) -> str:
    return ", ".join(f"{s.name} {s.env['OMS_METRICS_PORT']}" for s in specs if s.name != "api")


def _banner(settings: Settings, urls: infra.InfraUrls, specs: list[ProcessSpec], tls_env: dict[str, str]) -> str:
    log_dir = settings.infra.data_dir / "logs"
    web, grpc_tls = ("https", ", TLS") if tls_env else ("http", "")
    ca = tls_env.get("OMS_TLS_CA_FILE")
    tls_line = f"\n  TLS               every connection, plaintext refused; CA {ca} (./oms tls show)" if ca else ""
    return f"""
OMS is up.{tls_line}
  REST API          {web}://127.0.0.1:{settings.api.rest_port}/orders   (OpenAPI: /openapi.json, browse: /docs)
  gRPC              127.0.0.1:{settings.api.grpc_port}   (package trading.order.v1, reflection on{grpc_tls})
  RabbitMQ UI       {urls.management_url}   (guest / guest, this machine only; oms-admin: {_admin_password()})
  Postgres          {urls.database_url}   (the owner: migrations, tools)
  Database roles    {_roles(urls.database_url)}   (passwords: {_password_files()})
  AMQP              {urls.amqp_url}
  Logs (JSON)       {log_dir}/<process>.log
  Metrics           {web}://127.0.0.1:<port>/metrics: {_metrics_ports(specs)}, api on its REST port
  Processes         {", ".join(s.name for s in specs)}   (./oms ps)
Send a trade decision:  ./oms decision --account ACC-001 --symbol AAPL --side BUY --type MARKET --quantity 100
Mint a token:           ./oms token --sub me --accounts ACC-001 --scopes orders:read,orders:write
"""


def database_env(owner_url: str) -> dict[str, str]:
    """The processes' database URLs: each connects as the role of its kind (tools/infra/postgres.py), never as
    the owner, which migrated and seeded above. OMS_DATABASE_URL is the workers' too, so no process holds the
    owner's password. Without the local roles (made elsewhere), everything runs as the owner, as before.

    One environment for all: the stages, relay, jobs and venue use OMS_WORKER_DATABASE_URL (bootstrap.engine),
    the jobs worker's retention OMS_RETENTION_DATABASE_URL. On this machine every process runs as one OS user
    that can read every role's password file anyway, so the roles guard against a wrong or injected statement,
    not a compromised process; a deployment gives each service only its own URL.
    """
    worker = infra.role_url("worker", owner_url) or owner_url
    return {
        "OMS_DATABASE_URL": worker,
        "OMS_WORKER_DATABASE_URL": worker,
        "OMS_READ_DATABASE_URL": infra.role_url("reader", owner_url) or worker,
        "OMS_RETENTION_DATABASE_URL": infra.role_url("retention", owner_url) or owner_url,
    }


def _roles(owner_url: str) -> str:
    env = database_env(owner_url)
    users = {
        kind: make_url(env[variable]).username
        for kind, variable in (
            ("workers", "OMS_WORKER_DATABASE_URL"),
            ("reads", "OMS_READ_DATABASE_URL"),
            ("retention", "OMS_RETENTION_DATABASE_URL"),
        )
    }
    return ", ".join(f"{kind} as {user}" for kind, user in users.items())


def _password_files() -> str:
    return f"{infra.ServerSettings.from_env().data_dir}/pg-*.password"


def _admin_password() -> Path:
    """The file of the operator's broker password (the processes each have their own user)."""
    admin = brokerusers.BY_KIND["admin"]
    return infra.secrets_dir() / brokerusers.password_file_name(admin)


def _vhost(amqp_url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(amqp_url).path.lstrip("/")) or "/"


def main(argv: list[str]) -> int:
    """Entry point of ``oms up``."""
    parser = argparse.ArgumentParser(prog="oms up", description="bring up the whole system locally")
    parser.add_argument("--no-venue", action="store_true", help="leave the broker exchange to a real broker service")
    parser.add_argument("--no-api", action="store_true", help="do not start the REST/gRPC front end")
    parser.add_argument("--no-jobs", action="store_true", help="do not start the jobs worker and scheduler")
    parser.add_argument("--detach", action="store_true", help="supervise in the background and return (oms down)")
    parser.add_argument(
        "--replicas",
        type=_replicas_argument,
        default={},
        metavar="STAGE=N,...",
        help="run N replicas of a stage (e.g. execution_handler=2,settlement=2; all=2: every stage), each "
        f"consuming its share of the stage's {PARTITIONS} partition queues",
    )
    tls.add_tls_arguments(
        parser, "TLS on every connection (servers, workers, REST, gRPC, /metrics), plaintext refused; remembered"
    )
    args = parser.parse_args(argv)

    settings = load_settings()
    already = supervise.running_supervisor(settings.infra.data_dir)
    if already is not None:
        print(
            f"oms up: a supervisor from {settings.infra.data_dir} is already running (pid {already}); "
            "./oms ps shows it, ./oms down stops it",
            file=sys.stderr,
        )
        return 1
    urls = infra.ensure_started(tls_on=args.tls)
    servers = infra.ServerSettings.from_env()
    # With TLS on (this start's --tls, or remembered): every process serves REST, gRPC and /metrics over TLS and
    # trusts the CA; the database and AMQP URLs below carry their own TLS settings (sslmode, amqps).
    tls_env = tls.client_env(servers.data_dir) if servers.tls else {}
    # The processes' broker users may not declare the topology: the node loaded it at boot, and importing it
    # again (idempotent) brings back whatever it lost since.
    infra.load_topology(urls.management_url, _vhost(urls.amqp_url))
    migrate.upgrade(urls.database_url)
    seed.main(["--url", urls.database_url])

    specs = _specs(args)
    if not args.no_venue:
        infra.prepare_venue_tables(urls.database_url)
    env = {**database_env(urls.database_url), "OMS_AMQP_URL": urls.amqp_url, **tls_env}
    if urls.amqp_nodes:
        env["OMS_AMQP_NODES"] = urls.amqp_nodes  # a cluster (`infra start --rabbit-nodes 3`): fail over among its nodes
    banner = _banner(settings, urls, specs, tls_env)
    if args.detach:
        return _detach(settings, urls, env, specs, banner)
    return _foreground(settings, urls, env, specs, banner)


def _foreground(
    settings: Settings, urls: infra.InfraUrls, env: dict[str, str], specs: list[ProcessSpec], banner: str
) -> int:
    supervisor = Supervisor(env, settings.infra.data_dir / "logs", REPO_ROOT)
    loop = supervise.SupervisionLoop(supervisor, specs, supervise.state_file(settings.infra.data_dir))
    stop = threading.Event()
    supervise.install_stop_signals(stop)
    supervise.write_pid_file(settings.infra.data_dir, os.getpid())
    failed: list[str] = []

    def announce() -> None:
        missing = consumers_ready(
            urls.management_url, _vhost(urls.amqp_url), [q.name for q in all_stage_queues()], timeout=READY_SECONDS
        )
        if stop.is_set():
            return
        if missing:
            for child in loop.dead():
                print(
                    f"!! {child.spec.name} is not running; last lines of its log:\n{supervisor.tail(child.spec.name)}"
                )
            print(f"!! stage queues without a consumer: {', '.join(missing)}")
            failed.append("not ready")
            stop.set()
            return
        print(banner)
        print("Ctrl-C stops the processes (the servers keep running; ./oms infra stop stops them).")

    try:
        loop.start_all()
        threading.Thread(target=announce, name="announce", daemon=True).start()
        loop.run(stop)
    finally:
        supervise.remove_pid_file(settings.infra.data_dir, os.getpid())
    return 1 if failed else 0


def _detach(
    settings: Settings, urls: infra.InfraUrls, env: dict[str, str], specs: list[ProcessSpec], banner: str
) -> int:
    log_path = supervise.log_file(settings.infra.data_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        # B603: this interpreter running tools.supervise (daemon_command), no shell.
        daemon = subprocess.Popen(  # nosec B603
            supervise.daemon_command(supervise.specs_to_json(specs), settings.infra.data_dir),
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a daemon: no terminal, and Ctrl-C in this shell does not reach it
        )
    # Written here too (the daemon writes it as it starts): a second `oms up` right now must see it.
    supervise.write_pid_file(settings.infra.data_dir, daemon.pid)
    missing = consumers_ready(
        urls.management_url, _vhost(urls.amqp_url), [q.name for q in all_stage_queues()], timeout=READY_SECONDS
    )
    if missing or daemon.poll() is not None:
        print(f"!! stage queues without a consumer: {', '.join(missing) or 'none'}")
        # Why: the last lines of each process of a stage left without a consumer (its start-up error).
        stages = {name.split(".")[1] for name in missing}
        for spec in specs:
            if kind_of(spec.name) in stages:
                own = settings.infra.data_dir / "logs" / f"{spec.name}.log"
                print(f"!! {spec.name}'s log ({own}):\n{_tail(own, 15)}")
        print(f"!! the supervisor's log ({log_path}):\n{_tail(log_path)}")
        _stop_supervisor(settings.infra.data_dir, daemon.pid)
        return 1
    print(banner)
    print(
        f"Supervised in the background (supervisor pid {daemon.pid}, log {log_path}); "
        "./oms ps lists the processes, ./oms down stops everything."
    )
    return 0


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop_supervisor(data_dir: Path, pid: int, timeout: float = DOWN_TIMEOUT_SECONDS) -> bool:
    """SIGTERM the supervisor and wait for it to have stopped its children; True if it exited in time."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaps it when this process started it (a failed `up --detach`)
        if not supervise.is_alive(pid):
            return True
        time.sleep(0.2)  # waiting for the supervisor to stop its children, with a deadline
    return False


def _kill_recorded_children(data_dir: Path) -> None:
    """Last resort when the supervisor did not exit: SIGKILL the processes it recorded."""
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(supervise.state_file(data_dir).read_text())
        for name, process in state.get("processes", {}).items():
            pid = process.get("pid")
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
                    print(f"killed {name} ({pid})")


def down(argv: list[str]) -> int:
    """Entry point of ``oms down``: stop the supervisor (and so every process it runs), then the servers."""
    parser = argparse.ArgumentParser(prog="oms down")
    parser.add_argument("--keep-infra", action="store_true", help="leave Postgres and RabbitMQ running")
    parser.add_argument("--timeout", type=float, default=DOWN_TIMEOUT_SECONDS, help="seconds to wait for it")
    args = parser.parse_args(argv)
    data_dir = load_settings().infra.data_dir
    pid = supervise.running_supervisor(data_dir)
    if pid is not None:
        print(f"stopping the supervisor (pid {pid}) and its processes ...")
        if _stop_supervisor(data_dir, pid, args.timeout):
            print("stopped")
        else:
            print(f"!! the supervisor did not exit within {args.timeout:g}s; killing it and its processes")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _kill_recorded_children(data_dir)
        supervise.remove_pid_file(data_dir, pid)
    legacy = _legacy_pid_file()
    if legacy.exists():  # written by an `oms up --detach` from before the supervisor
        for name, old_pid in json.loads(legacy.read_text()).items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(old_pid, signal.SIGTERM)
                print(f"stopped {name} ({old_pid})")
        legacy.unlink()
    if not args.keep_infra:
        infra.stop()
    return 0


def ps(argv: list[str]) -> int:
    """Entry point of ``oms ps``: each supervised process with its pid, state, restarts and uptime."""
    parser = argparse.ArgumentParser(prog="oms ps", description="the processes `oms up` supervises")
    parser.add_argument("--json", action="store_true", help="the supervisor's state as JSON")
    args = parser.parse_args(argv)
    data_dir = load_settings().infra.data_dir
    pid = supervise.running_supervisor(data_dir)
    try:
        state = json.loads(supervise.state_file(data_dir).read_text())
    except (OSError, ValueError):
        state = {}
    if args.json:
        processes = [{"name": name, **process} for name, process in state.get("processes", {}).items()]
        print(json.dumps({"supervisor_pid": pid, "processes": processes}))
        return 0 if pid is not None else 1
    if pid is None:
        print("no supervisor is running (./oms up starts one)")
        return 1 if not state else 0
    print(f"supervisor pid {pid}, up {_duration(time.time() - float(state.get('started_at', time.time())))}")
    print(f"{'NAME':<20} {'PID':>8} {'STATE':<9} {'RESTARTS':>8} {'UPTIME':>10}")
    for name, process in state.get("processes", {}).items():
        process_pid = process.get("pid")
        status = process.get("state", "?")
        if status == "running" and process_pid and not supervise.is_alive(int(process_pid)):
            status = "exited"  # between the exit and the supervisor's next tick
        started = process.get("started_at")
        uptime = _duration(time.time() - float(started)) if started and status == "running" else "-"
        print(f"{name:<20} {process_pid or '-':>8} {status:<9} {process.get('restarts', 0):>8} {uptime:>10}")
    return 0


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
