"""A whole OMS of its own, brought up with ``./oms up --detach`` as a user does, for the fault suite.

It gets its own data folder, Postgres and RabbitMQ (ports found free), front-end ports and metrics ports, so
the outages the suite injects touch nothing else on the machine, and ``./oms down`` takes it all away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
from sqlalchemy import Engine, text

from common import jsonutil
from common.messages.catalogue import TRADE_DECISION
from common.messages.headers import ACCOUNT_HEADER
from common.settings import REPO_ROOT
from tests.support.polling import async_wait_until
from tools import infra
from tools.infra import postgres, rabbitmq

OMS = str(REPO_ROOT / "oms")


# Below Linux's ephemeral range (32768-60999): a port picked there can be taken as the local end of some client's
# connection before the server meant to listen on it starts (seen: a worker's metrics port, the worker exiting 1
# at every restart). Above the ports the suites fix (dist 25xxx, AMQP 31xxx).
_PORT_RANGE = range(20000, 25000)


def _bindable(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, below the ephemeral range (the suite starts its servers right after)."""
    chosen: list[int] = []
    for _ in range(1000):
        port = random.choice(_PORT_RANGE)  # nosec B311
        if port not in chosen and _bindable(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free ports")


def _port_block(size: int) -> int:
    """The first of ``size`` consecutive free ports (the supervisor numbers metrics ports from a base)."""
    for _ in range(200):
        base = random.randrange(_PORT_RANGE.start, _PORT_RANGE.stop - size)  # nosec B311
        if all(_bindable(port) for port in range(base, base + size)):
            return base
    raise RuntimeError("no block of free ports")


@dataclass
class Instance:
    """An OMS brought up by ``./oms up --detach`` with an environment of its own."""

    env: dict[str, str]
    data_dir: Path
    urls: infra.InfraUrls
    crash_trigger: Path
    log: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, extra: Mapping[str, str], metrics_ports: int = 12) -> Instance:
        """An instance of its own; ``extra`` overrides its environment (fixed ports, a cluster's node name...),
        ``metrics_ports`` is how many processes it may run (one metrics port each; more with ``--replicas``)."""
        run = uuid.uuid4().hex[:8]
        # Beside the machine's default data folder, which tools/infra/settings.py keeps where the servers' users
        # can reach (outside a private checkout such as a mktemp -d clone).
        default = cls._settings({k: v for k, v in os.environ.items() if k != "OMS_DATA_DIR"}).data_dir
        data_dir = default / f"fault-{run}"
        pg, amqp, mgmt, dist, rest, grpc = free_ports(6)
        env = {
            **os.environ,
            "OMS_DATA_DIR": str(data_dir),
            "OMS_PG_PORT": str(pg),
            "OMS_AMQP_PORT": str(amqp),
            "OMS_RABBITMQ_MGMT_PORT": str(mgmt),
            "OMS_RABBITMQ_DIST_PORT": str(dist),
            "OMS_RABBITMQ_NODENAME": f"oms-fault-{run}@localhost",
            "OMS_REST_PORT": str(rest),
            "OMS_GRPC_PORT": str(grpc),
            "OMS_METRICS_PORT_BASE": str(_port_block(metrics_ports)),
            **extra,
        }
        for key in ("OMS_DATABASE_URL", "OMS_AMQP_URL", "OMS_TEST_DATABASE_URL", "OMS_TEST_AMQP_URL"):
            env.pop(key, None)
        crash_trigger = data_dir / "crash-router-after-commit"
        env["OMS_TEST_CRASH_AFTER_COMMIT"] = f"router:{crash_trigger}"
        settings = cls._settings(env)
        return cls(env=env, data_dir=data_dir, urls=settings.urls, crash_trigger=crash_trigger)

    @staticmethod
    def _settings(env: Mapping[str, str]) -> infra.ServerSettings:
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(env)
            return infra.ServerSettings.from_env()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @property
    def infra_settings(self) -> infra.ServerSettings:
        return self._settings(self.env)

    def oms(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``./oms ARGS`` against this instance."""
        result = subprocess.run(
            [OMS, *args], env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        self.log.append(f"$ oms {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
        if check and result.returncode != 0:
            raise RuntimeError(f"oms {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def up(self, *args: str) -> None:
        """``./oms up --detach ARGS`` (e.g. ``--replicas all=2``)."""
        self.oms("up", "--detach", *args)

    def down(self) -> list[int]:
        """Stop everything; returns the pids of any process that outlived it (killed here, for the next run)."""
        self.oms("down", check=False)
        left = self.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if os.environ.get("OMS_FAULT_KEEP"):  # debugging: keep the logs and the servers' data
            print(f"fault suite: kept {self.data_dir}")
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return left

    def leftovers(self) -> list[int]:
        """Pids of processes still running with this instance's environment (none should outlive ``down``)."""
        marker = f"OMS_DATA_DIR={self.data_dir}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if marker in environ.split(b"\0") and b"python" in cmdline:
                found.append(int(entry.name))
        return found

    def processes(self) -> dict[str, dict[str, Any]]:
        """What the supervisor says of each process: ``./oms ps --json``."""
        out = self.oms("ps", "--json").stdout
        data = json.loads(out)
        return {p["name"]: p for p in (data["processes"] if isinstance(data, dict) else data)}

    def pid(self, name: str) -> int | None:
        entry = self.processes().get(name)
        pid = entry.get("pid") if entry else None
        return int(pid) if pid else None

    # --- outages of the instance's own servers -------------------------------------------------------

    def stop_broker(self) -> None:
        rabbitmq.stop(self.infra_settings)

    def start_broker(self) -> None:
        rabbitmq.start(self.infra_settings)

    def stop_database(self) -> None:
        postgres.stop(self.infra_settings)

    def start_database(self) -> None:
        postgres.start(self.infra_settings)

    def logs_tail(self, name: str, lines: int = 30) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def outage(stop: Any, start: Any, seconds: float) -> float:
    """Keep a server down for ``seconds`` once stopped (the fault's length, not a wait for state); returns how
    long it was down, from the end of its stop to the start of its start."""
    stop()
    down = time.monotonic()
    time.sleep(seconds)
    length = time.monotonic() - down
    start()
    return length


def decision(index: int, account: str, symbol: str, strategy: str) -> tuple[dict[str, Any], aio_pika.Message]:
    """The ``index``-th MARKET decision of a stream, as the strategy service publishes it (its account in the
    header that picks the intake partition): its body and the message."""
    body: dict[str, Any] = {
        "decisionId": str(uuid.uuid4()),
        "accountId": account,
        "symbol": symbol,
        "side": "BUY" if index % 3 else "SELL",
        "type": "MARKET",
        "quantity": Decimal(10 + index % 40),
        "timeInForce": "DAY",
        "strategyId": strategy,
    }
    message = aio_pika.Message(
        jsonutil.dumps(body).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),
        type=TRADE_DECISION.type,
        headers={ACCOUNT_HEADER: account},
    )
    return body, message


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    """One value of a query."""
    with engine.connect() as connection:
        return connection.execute(text(sql), params).scalar()


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    """The rows of a query, as mappings."""
    with engine.connect() as connection:
        return list(connection.execute(text(sql), params).mappings())


def filled(engine: Engine, strategy: str) -> int:
    """How many orders of the stream ``strategy`` are FILLED."""
    return int(scalar(engine, "SELECT count(*) FROM orders WHERE strategy_id = :s AND state = 'FILLED'", s=strategy))


async def progress(engine: Engine, strategy: str, more: int, timeout: float) -> float:
    """Wait until ``more`` orders of the stream have been filled since now: the system is flowing; returns how
    long that took."""
    began = time.monotonic()
    target = await asyncio.to_thread(filled, engine, strategy) + more
    await async_wait_until(
        lambda: filled(engine, strategy) >= target,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"{filled(engine, strategy)}/{target} filled",
    )
    return time.monotonic() - began


async def kill_and_await_restart(instance: Instance, name: str, timeout: float) -> None:
    """kill -9 the supervised process ``name`` and wait until the supervisor has started it again."""
    pid = await asyncio.to_thread(instance.pid, name)
    assert pid, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        now = instance.pid(name)
        return now is not None and now != pid

    await async_wait_until(restarted, timeout=timeout, interval=0.2, message=f"{name} restarted")


def order_trail(engine: Engine, order_id: str) -> str:
    """An order's events and outbox rows, to print for an order a fault test expected to be final."""
    events = rows(
        engine,
        "SELECT sequence, type, timestamp, message_id FROM order_events WHERE order_id = :o ORDER BY sequence",
        o=order_id,
    )
    outbox = rows(
        engine,
        "SELECT routing_key, created_at, sent_at, claimed FROM outbox WHERE correlation_id = :o ORDER BY id",
        o=order_id,
    )
    return f"  events {[dict(e) for e in events]}\n  outbox {[dict(r) for r in outbox]}"
