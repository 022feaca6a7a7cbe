"""A whole system on a database and vhost of its own: for end-to-end tests and benchmarks."""

from __future__ import annotations

import contextlib
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import requests
from sqlalchemy import Engine

from common.messaging.topology import STAGE_QUEUES, all_stage_queues, replica_queues
from common.settings import REPO_ROOT
from common.store.db import make_engine
from tools import infra, migrate
from tools.infra import InfraUrls, tls
from tools.processes import STAGES, ProcessSpec, Supervisor, kind_of, system, with_replicas
from tools.seed import seed_demo


@dataclass
class Sandbox:
    """A running pipeline and how to reach it."""

    database_url: str
    amqp_url: str
    management_url: str
    vhost: str
    supervisor: Supervisor
    engine: Engine
    specs: list[ProcessSpec]

    def restart(self, name: str) -> None:
        """Start a process again (after a test stopped or killed it) and wait until its queue has a consumer."""
        spec = next(s for s in self.specs if s.name == name)
        self.supervisor.start(spec)
        if kind_of(name) in STAGES:
            own = replica_queues(
                STAGE_QUEUES[kind_of(name)],
                int(spec.env.get("OMS_STAGE_REPLICA_INDEX", "0")),
                int(spec.env.get("OMS_STAGE_REPLICAS", "1")),
            )
            missing = consumers_ready(self.management_url, self.vhost, [q.name for q in own], timeout=60)
            if missing:
                raise RuntimeError(f"{name} did not come back:\n{self.supervisor.tail(name)}")

    def pids(self) -> dict[str, int]:
        """The pid of each running process by name (``oms bench`` reads their CPU from /proc)."""
        return {name: r.popen.pid for name, r in self.supervisor.running.items() if r.popen.poll() is None}


def _management_login(management_url: str) -> tuple[str, str]:
    """The login a management URL carries (docker compose's operator), else the local node's guest."""
    parts = urllib.parse.urlsplit(management_url)
    if parts.username:
        return urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    return "guest", "guest"


def consumers_ready(management_url: str, vhost: str, queues: list[str], timeout: float) -> list[str]:
    """Poll the management API until every queue has a consumer; returns those that never got one."""
    missing = list(queues)
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        still = []
        for queue in missing:
            url = f"{management_url.rstrip('/')}/api/queues/{urllib.parse.quote(vhost, safe='')}/{queue}"
            try:
                answer = requests.get(
                    url, auth=_management_login(management_url), timeout=2, verify=tls.verify_for(management_url)
                )
                ok = answer.status_code == 200 and answer.json().get("consumers", 0) > 0
            except requests.RequestException:
                ok = False
            if not ok:
                still.append(queue)
        missing = still
        if missing:
            time.sleep(0.2)  # polling the broker, with a deadline
    return missing


def _amqp_nodes(urls: infra.InfraUrls) -> dict[str, str]:
    """``OMS_AMQP_NODES`` of the processes when the broker is a cluster (they fail over among its nodes)."""
    return {"OMS_AMQP_NODES": urls.amqp_nodes} if urls.amqp_nodes else {}


@contextlib.contextmanager
def sandbox(
    infra_urls: InfraUrls,
    *,
    with_venue: bool,
    env: Mapping[str, str] | None = None,
    label: str = "oms_sbx",
    extra: Sequence[ProcessSpec] = (),
    replicas: Mapping[str, int] | None = None,
) -> Iterator[Sandbox]:
    """Create a database and vhost, migrate and seed, start every worker (``replicas``: of a stage, by stage);
    tear it all down afterwards.

    ``extra`` processes (``oms bench --rest`` adds the REST server) start after the pipeline; the caller waits
    for them to be ready.
    """
    name = f"{label}_{uuid.uuid4().hex[:10]}"
    database_url = infra.create_database(name, infra_urls.database_url)
    engine = make_engine(database_url)
    supervisor: Supervisor | None = None
    try:  # from here on, whatever stops the set-up (an error, Ctrl-C, `oms bench`'s SIGTERM) drops both
        infra.create_vhost(name, infra_urls.management_url)
        # As `oms up` runs them: the topology is the broker's definitions, and each process logs in as its
        # kind's broker user, which may not declare it (guest stays the tests' own).
        infra.load_topology(infra_urls.management_url, name)
        infra.ensure_process_users(infra_urls.management_url, [name])
        amqp_url = infra.amqp_url_for_vhost(infra_urls.amqp_url, name)
        # The processes connect as the workers' role, as under `oms up` (the owner's engine sets up and checks).
        roles = {
            variable: url
            for variable, url in (
                ("OMS_WORKER_DATABASE_URL", infra.role_url("worker", database_url)),
                ("OMS_READ_DATABASE_URL", infra.role_url("reader", database_url)),
                ("OMS_RETENTION_DATABASE_URL", infra.role_url("retention", database_url)),
            )
            if url is not None
        }
        supervisor = Supervisor(
            {
                "OMS_DATABASE_URL": database_url,
                "OMS_AMQP_URL": amqp_url,
                **_amqp_nodes(infra_urls),
                **roles,
                **(env or {}),
            },
            REPO_ROOT / ".data" / "logs" / name,
            REPO_ROOT,
            die_with_parent=True,
        )
        migrate.upgrade(database_url)
        with engine.begin() as connection:
            seed_demo(connection)
        if with_venue:
            infra.prepare_venue_tables(database_url)
        specs = [
            ProcessSpec(s.name, s.module, s.args, {**s.env, **infra.process_env(kind_of(s.name))})
            for s in with_replicas(system(with_venue=with_venue, with_api=False, extra=extra), replicas or {})
        ]
        supervisor.start_all(specs)
        missing = consumers_ready(infra_urls.management_url, name, [q.name for q in all_stage_queues()], timeout=90)
        if missing or supervisor.dead():
            logs = "\n".join(f"--- {r.spec.name}\n{supervisor.tail(r.spec.name)}" for r in supervisor.dead())
            raise RuntimeError(f"pipeline did not start: no consumer on {missing}\n{logs}")
        yield Sandbox(database_url, amqp_url, infra_urls.management_url, name, supervisor, engine, specs)
    finally:
        if supervisor is not None:
            supervisor.stop_all()
        engine.dispose()
        infra.delete_vhost(name, infra_urls.management_url)
        infra.drop_database(name, infra_urls.database_url)
