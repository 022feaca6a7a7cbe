"""``oms bench``: throughput, CPU per order by process, messages per order and latency of the whole pipeline.

Each run starts the whole system (every stage worker, the relay and the simulated venue, each its own process,
co-located on this machine; with ``--rest`` the REST server too) on a database and vhost of its own, on the
machine's one Postgres cluster and RabbitMQ node. Modes:

    ./oms bench --orders 2000                   # throughput: N decisions as fast as possible, until all settled
    ./oms bench --rate 100 --seconds 60         # fixed rate: decision-to-FILLED latency percentiles
    ./oms bench --rest --rate 20 --seconds 30   # through the REST server: POST/GET and POST-to-FILLED
    ./oms bench --history 200000 --orders 2000  # preload history first (set-based SQL)
    ./oms bench --orders 2000 --json a.json     # everything as JSON; --compare a.json b.json prints the ratios
    ./oms bench --baseline-orders 300           # also batches of one, for the batching ratio
    ./oms bench --rate 60 --seconds 40 --profile execution_handler,settlement   # py-spy during the window
    ./oms bench --floor --rate 50               # what an order flowing alone costs at least (tools/bench_floor.py)

CPU is utime+stime from /proc/<pid>/stat, before and after the measured window, for each OMS process tree, the
Postgres cluster (the postmaster and all its children) and the RabbitMQ node (beam.smp and its children).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests
import urllib3
from sqlalchemy import text

from common import jsonutil
from common.messages.catalogue import TRADE_DECISION
from common.messages.headers import ACCOUNT_HEADER
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.messaging.topology import declare_topology
from common.store.outbox import OutboxMessage
from tools import bench_floor, bench_history, bench_profile, infra
from tools.bench_cpu import CpuSampler, cpu_deltas, own_ticks, server_groups, summarize
from tools.infra import tls
from tools.processes import ProcessSpec, parse_replicas
from tools.sandbox import Sandbox, sandbox

SHARED_NOTE = (
    "the sandbox shares this machine's Postgres cluster and RabbitMQ node; during a bench nothing else uses "
    "them, so their whole CPU is charged to the run (the bench's own polling queries included)"
)
# The management API refreshes message_stats every collect_statistics_interval (5 s by default).
STATS_SETTLE_S = 5.5
# Signs the tokens of the bench's own sandbox, whose API listens on loopback for the length of a run: a fixed
# test key, never a deployment's (B105).
BENCH_SECRET = "oms-bench-secret-0123456789abcdef0123456789"  # nosec B105

# Polled during the window, so its cost is charged to Postgres: the run's orders by their strategy index, then
# their confirmations by order id (a join the other way round read every confirmation of the history).
_SETTLED = text(
    "WITH run AS MATERIALIZED (SELECT id, state FROM orders WHERE strategy_id = :run) "
    "SELECT (SELECT count(*) FROM run WHERE state = 'FILLED'), "
    "(SELECT count(*) FROM run JOIN LATERAL (SELECT 1 FROM trade_confirmations c WHERE c.order_id = run.id) AS c "
    "ON true)"
)
# When each order of the run became FILLED (the ORDER_FILLED event), by its client order id (the decision id).
_FILLED_AT = text(
    "SELECT o.client_order_id, extract(epoch FROM e.timestamp)::float8 FROM orders o "
    "JOIN order_events e ON e.order_id = o.id AND e.type = 'ORDER_FILLED' WHERE o.strategy_id = :run"
)


def _decision(run: str, i: int) -> OutboxMessage:
    symbols = ("AAPL", "MSFT", "SPY")
    decision_id = str(uuid.uuid4())
    body = {
        "decisionId": decision_id,
        "accountId": "ACC-001" if i % 2 else "ACC-002",
        "symbol": symbols[i % len(symbols)],
        "side": "BUY" if i % 3 else "SELL",
        "type": "MARKET",
        "quantity": Decimal(1 + i % 5),
        "timeInForce": "DAY",
        "strategyId": run,
    }
    return OutboxMessage(
        str(uuid.uuid4()),
        TRADE_DECISION.exchange,
        TRADE_DECISION.routing_key,
        TRADE_DECISION.type,
        decision_id,
        jsonutil.dumps(body),
        {ACCOUNT_HEADER: body["accountId"]},
    )


def _decisions(run: str, count: int) -> list[OutboxMessage]:
    return [_decision(run, i) for i in range(count)]


# --- the broker's message counts ---------------------------------------------------------------------------


def exchange_publishes(management_url: str, vhost: str) -> dict[str, int]:
    """publish_in per exchange of the vhost, from the management API (sampled every 5 s by the broker)."""
    url = f"{management_url.rstrip('/')}/api/exchanges/{urllib.parse.quote(vhost, safe='')}"
    answer = requests.get(url, auth=("guest", "guest"), timeout=5, verify=tls.verify_for(management_url))
    answer.raise_for_status()
    counts = {}
    for exchange in answer.json():
        name = exchange.get("name") or "(default)"
        if name.startswith("amq."):
            continue
        counts[name] = int((exchange.get("message_stats") or {}).get("publish_in", 0))
    return counts


def per_order(before: Mapping[str, float], after: Mapping[str, float], orders: int) -> dict[str, float]:
    """(after - before) / orders per key; keys of either side."""
    return {k: (after.get(k, 0) - before.get(k, 0)) / orders for k in sorted({*before, *after})}


# --- measuring a window --------------------------------------------------------------------------------------


class Window:
    """CPU and message counts around a measured window."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        servers = server_groups()
        beams = servers.get("rabbitmq", [])
        self.servers: dict[str, Any] = {
            "postgres": servers.get("postgres", [None])[0],
            "rabbitmq": beams[0] if len(beams) == 1 else beams,
        }
        groups: dict[str, list[int]] = {name: [pid] for name, pid in box.pids().items()}
        groups.update(servers)
        groups["bench client"] = [os.getpid()]
        # The bench's own tree would include the workers (its children): the client is this process alone.
        self.sampler = CpuSampler(groups)

    def _snapshot(self) -> dict[str, int]:
        ticks = self.sampler.snapshot()
        ticks["bench client"] = own_ticks()
        return ticks

    def idle(self, seconds: float) -> None:
        """CPU per second of each group with no orders flowing: the fixed cost (price feed, polling, timers)."""
        self.idle_cpu_per_s: dict[str, float] = {}
        if seconds <= 0:
            return
        before = self._snapshot()
        started = time.perf_counter()
        time.sleep(seconds)
        after = self._snapshot()
        elapsed = time.perf_counter() - started
        self.idle_cpu_per_s = {k: v / elapsed for k, v in cpu_deltas(before, after).items()}

    def begin(self) -> None:
        """Wait for the broker's stats to settle, then take the first readings."""
        time.sleep(STATS_SETTLE_S)
        self.messages_before = exchange_publishes(self.box.management_url, self.box.vhost)
        self.members = self.sampler.members()
        self.cpu_before = self._snapshot()
        self.started = time.perf_counter()
        self.load_before = os.getloadavg()

    def end(self) -> None:
        """Take the second CPU reading now, the message counts once the broker's stats caught up."""
        self.seconds = time.perf_counter() - self.started
        self.cpu_after = self._snapshot()
        self.load_after = os.getloadavg()
        time.sleep(STATS_SETTLE_S)
        self.messages_after = exchange_publishes(self.box.management_url, self.box.vhost)

    def result(self, orders: int) -> dict[str, Any]:
        """The window's figures for ``orders`` orders."""
        cpu = cpu_deltas(self.cpu_before, self.cpu_after)
        client = cpu.pop("bench client", 0.0)
        ms_per_order = {name: 1000 * s / orders for name, s in sorted(cpu.items(), key=lambda kv: -kv[1])}
        oms = sum(v for k, v in ms_per_order.items() if k not in ("postgres", "rabbitmq"))
        messages = per_order(self.messages_before, self.messages_after, orders)
        idle = getattr(self, "idle_cpu_per_s", {})
        idle.pop("bench client", None)
        # What the orders themselves cost: the window's CPU less the idle cost over the window's length.
        net = {name: 1000 * max(0.0, cpu[name] - idle.get(name, 0.0) * self.seconds) / orders for name in cpu}
        return {
            "orders": orders,
            "window_seconds": self.seconds,
            "throughput_orders_per_s": orders / self.seconds,
            "cpu_seconds": cpu,
            "cpu_ms_per_order": ms_per_order,
            "cpu_ms_per_order_total": sum(ms_per_order.values()),
            "cpu_ms_per_order_oms_processes": oms,
            "cores_busy": sum(cpu.values()) / self.seconds,
            "bench_client_cpu_ms_per_order": 1000 * client / orders,
            "idle_cpu_ms_per_s": {name: 1000 * v for name, v in sorted(idle.items(), key=lambda kv: -kv[1])},
            "cpu_ms_per_order_net_of_idle": dict(sorted(net.items(), key=lambda kv: -kv[1])) if idle else {},
            "processes_per_group": self.members,
            "server_pids": self.servers,
            "messages_per_order": messages,
            "messages_per_order_total": sum(messages.values()),
            "loadavg_before": list(self.load_before),
            "loadavg_after": list(self.load_after),
        }


# The settled poll reads every order of the run, so its cost grows with the run, and it lands on Postgres, whose
# CPU the window charges to the OMS: at a fixed 50 ms it was 6% of a burst's CPU per order (0.28 of 4.5 ms). It
# runs every 50 ms only near the end, when the recent rate of settling says the end is near.
_POLL_FLOOR_SECONDS = 0.05
_POLL_IDLE_SECONDS = 0.1  # while nothing has settled since the last poll
_POLL_CEILING_SECONDS = 0.25


def _next_poll(left: int, settled_since: int, seconds_since: float) -> float:
    """Seconds to the next settled poll: half the time the recent rate says is left, within floor and ceiling
    (half, so that the poll does not overshoot the end: the window closes at the poll that sees it)."""
    if settled_since <= 0:
        return _POLL_IDLE_SECONDS
    return min(_POLL_CEILING_SECONDS, max(_POLL_FLOOR_SECONDS, left * seconds_since / settled_since / 2))


async def _wait_settled(box: Sandbox, run: str, orders: int, deadline: float) -> None:
    last_done, last_at = 0, time.perf_counter()
    while True:
        with box.engine.connect() as db:
            filled, settled = db.execute(_SETTLED, {"run": run}).one()
        if filled >= orders and settled >= orders:
            return
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"run {run}: {filled}/{orders} filled, {settled} settled by the deadline")
        done = min(filled, settled)
        pause = _next_poll(orders - done, done - last_done, now - last_at)
        last_done, last_at = done, now
        await asyncio.sleep(pause)  # polling the database for the end of the run


# The steps an order's events mark on its way to FILLED, in order: each hop's latency is the time between two.
_HOPS = ("ORDER_CREATED", "RISK_APPROVED", "ORDER_ROUTED", "ORDER_ACKNOWLEDGED", "ORDER_FILLED")
_STEPS_AT = text(
    "SELECT o.client_order_id, e.type, extract(epoch FROM e.timestamp)::float8 FROM orders o "
    "JOIN order_events e ON e.order_id = o.id AND e.type = ANY(:types) WHERE o.strategy_id = :run"
)


# When the venue matched each order: its first execution report's time (the venue's clock, this machine's).
_VENUE_AT = text(
    "SELECT o.client_order_id, extract(epoch FROM min(r.timestamp))::float8 FROM orders o "
    "JOIN execution_reports r ON r.order_id = o.id WHERE o.strategy_id = :run GROUP BY o.client_order_id"
)


def _hop_latencies_ms(box: Sandbox, run: str, sent_at: Mapping[str, float]) -> dict[str, list[float]]:
    """Latency of each hop (decision -> ORDER_CREATED -> ... -> ORDER_FILLED) from the orders' event times; the
    hop through the venue also split at the venue's fill (``routed>venue``, ``venue>acknowledged``)."""
    steps: dict[str, dict[str, float]] = {}
    with box.engine.connect() as db:
        for key, kind, at in db.execute(_STEPS_AT, {"run": run, "types": list(_HOPS)}):
            steps.setdefault(key, {})[kind] = at
        venue_at: dict[str, float] = dict(db.execute(_VENUE_AT, {"run": run}).tuples().all())
    hops: dict[str, list[float]] = {}
    for key, at in steps.items():
        if key not in sent_at or any(kind not in at for kind in _HOPS):
            continue
        previous, before = "decision", sent_at[key]
        for kind in _HOPS:
            hops.setdefault(f"hop {previous[:9].lower()}>{kind.removeprefix('ORDER_').lower()}", []).append(
                1000 * (at[kind] - before)
            )
            previous, before = kind.removeprefix("ORDER_").removeprefix("RISK_"), at[kind]
        if key in venue_at:
            hops.setdefault("hop routed>venue", []).append(1000 * (venue_at[key] - at["ORDER_ROUTED"]))
            hops.setdefault("hop venue>acknowledged", []).append(1000 * (at["ORDER_ACKNOWLEDGED"] - venue_at[key]))
    return hops


def _filled_latencies_ms(box: Sandbox, run: str, sent_at: Mapping[str, float]) -> list[float]:
    with box.engine.connect() as db:
        rows = db.execute(_FILLED_AT, {"run": run}).all()
    return [1000 * (filled - sent_at[key]) for key, filled in rows if key in sent_at]


async def _publish_confirmed(publisher: Publisher, chunk: list[OutboxMessage], confirmed_at: dict[str, float]) -> None:
    """Publish decisions with confirms; each decision's time (by decision id) is when its confirm arrived."""
    if len(await publisher.publish(chunk)) != len(chunk):
        raise RuntimeError("decisions not confirmed by the broker")
    now = time.time()
    confirmed_at.update((m.correlation_id or "", now) for m in chunk)


async def _publish_all(box: Sandbox, run: str, orders: int, timeout: float) -> tuple[float, dict[str, float]]:
    """Publish ``orders`` decisions as fast as confirms allow; wait until all settled. (publish s, confirm times)"""
    messages = _decisions(run, orders)
    confirmed_at: dict[str, float] = {}
    connection = await connect(box.amqp_url, "oms.bench")
    try:
        await declare_topology(await connection.channel(), 5)
        publisher = Publisher(connection)
        started = time.perf_counter()
        for i in range(0, len(messages), 500):
            await _publish_confirmed(publisher, messages[i : i + 500], confirmed_at)
        published = time.perf_counter() - started
        await _wait_settled(box, run, orders, started + timeout)
        return published, confirmed_at
    finally:
        await connection.close()


async def _publish_at_rate(
    box: Sandbox, run: str, rate: float, seconds: float, timeout: float
) -> tuple[int, dict[str, float], float]:
    """Publish at ``rate``/s for ``seconds``; each decision's time is when its confirm arrived."""
    total = int(rate * seconds)
    confirmed_at: dict[str, float] = {}
    connection = await connect(box.amqp_url, "oms.bench")
    try:
        await declare_topology(await connection.channel(), 5)
        publisher = Publisher(connection)
        started = time.perf_counter()
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            if due > sent:
                chunk = [_decision(run, i) for i in range(sent, due)]
                await _publish_confirmed(publisher, chunk, confirmed_at)
                sent = due
            next_due = started + sent / rate
            await asyncio.sleep(max(0.0, next_due - time.perf_counter()))
        behind = time.perf_counter() - started - seconds
        await _wait_settled(box, run, total, started + seconds + timeout)
        return total, confirmed_at, behind
    finally:
        await connection.close()


def _start_profile(args: argparse.Namespace, box: Sandbox, seconds: float) -> bench_profile.Profiler | None:
    """py-spy on the processes named by ``--profile`` for ``seconds`` (None when not asked)."""
    if not args.profile:
        return None
    pids = box.pids()
    unknown = [name for name in args.profile if name not in pids]
    if unknown:
        raise RuntimeError(f"--profile: no process {', '.join(unknown)}; there are {', '.join(sorted(pids))}")
    out_dir = Path(args.profile_dir or f".data/bench/profile-{time.strftime('%Y%m%d-%H%M%S')}")
    chosen = {name: pids[name] for name in args.profile}
    profiler = bench_profile.Profiler(chosen, out_dir, seconds, nonblocking=args.profile_nonblocking)
    profiler.start()
    return profiler


def _finish_profile(profiler: bench_profile.Profiler | None, result: dict[str, Any]) -> None:
    if profiler is None:
        return
    spots = profiler.finish()
    result["profile"] = {
        "dir": str(profiler.out_dir),
        "seconds": profiler.seconds,
        "processes": {
            name: {
                "samples": found.samples,
                "waiting_pct": found.waiting_pct,
                "self_pct": found.self_pct,
                "inclusive_pct": found.inclusive_pct,
                "package_pct": found.package_pct,
            }
            for name, found in spots.items()
        },
    }
    for name, found in spots.items():
        print(bench_profile.report(name, found))
    print(f"(collapsed stacks in {profiler.out_dir})")


def _env(batch: int, venue_latency_ms: int) -> dict[str, str]:
    return {
        "OMS_BATCH_SIZE": str(batch),
        "OMS_VENUE_PARTIAL_FILLS": "1",
        "OMS_VENUE_LATENCY_MS": str(venue_latency_ms),
        "OMS_LOG_LEVEL": "WARNING",
    }


def _warm_up(box: Sandbox, timeout: float) -> None:
    asyncio.run(_publish_all(box, f"warm-{uuid.uuid4().hex[:8]}", 200, timeout))


def _history(box: Sandbox, orders: int) -> dict[str, float] | None:
    if orders <= 0:
        return None
    print(f"preloading {orders:,} orders of history")
    return bench_history.preload(box.engine, orders)


def run_throughput(args: argparse.Namespace, batch: int, orders: int) -> dict[str, Any]:
    """Throughput mode: ``orders`` decisions as fast as possible, repeated; the median run is reported."""
    runs = []
    with sandbox(
        infra.ensure_started(),
        with_venue=True,
        env=_env(batch, args.venue_latency_ms),
        label="oms_bench",
        replicas=args.replicas,
    ) as box:
        history = _history(box, args.history)
        _warm_up(box, args.timeout)
        for _ in range(args.repeats):
            run = f"bench-{uuid.uuid4().hex[:12]}"
            window = Window(box)
            window.idle(args.idle)
            window.begin()
            profiler = _start_profile(args, box, args.profile_seconds)
            published, confirmed_at = asyncio.run(_publish_all(box, run, orders, args.timeout))
            window.end()
            result = window.result(orders)
            _finish_profile(profiler, result)
            result["publish_seconds"] = published
            result["latency_ms"] = {"decision_to_filled": summarize(_filled_latencies_ms(box, run, confirmed_at))}
            print(
                f"  batch {batch}: {orders} orders published in {published:.2f}s, settled in "
                f"{result['window_seconds']:.2f}s -> {result['throughput_orders_per_s']:.0f} orders/s, "
                f"{result['cpu_ms_per_order_total']:.1f} ms CPU/order"
            )
            runs.append(result)
    chosen = sorted(runs, key=lambda r: r["throughput_orders_per_s"])[len(runs) // 2]
    chosen["runs_orders_per_s"] = [r["throughput_orders_per_s"] for r in runs]
    chosen["history"] = history
    return chosen


def run_rate(args: argparse.Namespace) -> dict[str, Any]:
    """Fixed-rate mode: decisions at ``--rate``/s for ``--seconds``; latency of every order to FILLED."""
    with sandbox(
        infra.ensure_started(),
        with_venue=True,
        env=_env(args.batch, args.venue_latency_ms),
        label="oms_bench",
        replicas=args.replicas,
    ) as box:
        history = _history(box, args.history)
        _warm_up(box, args.timeout)
        run = f"bench-{uuid.uuid4().hex[:12]}"
        window = Window(box)
        window.idle(args.idle)
        window.begin()
        profiler = _start_profile(args, box, min(args.seconds, args.profile_seconds))
        total, confirmed_at, behind = asyncio.run(_publish_at_rate(box, run, args.rate, args.seconds, args.timeout))
        window.end()
        result = window.result(total)
        _finish_profile(profiler, result)
        result["publisher_behind_seconds"] = behind
        result["latency_ms"] = {"decision_to_filled": summarize(_filled_latencies_ms(box, run, confirmed_at))}
        for hop, values in _hop_latencies_ms(box, run, confirmed_at).items():
            result["latency_ms"][hop] = summarize(values)
        result["history"] = history
        return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the REST server exited")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)  # polling the server until it answers, with a deadline
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _rest_load(
    base: str, token: str, run: str, rate: float, seconds: float
) -> tuple[dict[str, float], list[float], list[float], int]:
    """POST orders at ``rate``/s (open loop, from a thread pool), then GET each one after its POST.

    Through urllib3's connection pool (kept-alive connections, one per thread in use), not ``requests``: the
    client's own CPU per request is in the latency it measures, and ``requests`` spends twice urllib3's (0.9
    against 0.4 ms a call on this machine class), on the same two cores as the server."""
    server = urllib3.util.parse_url(base)
    pool_of_connections = urllib3.HTTPConnectionPool(server.host or "127.0.0.1", server.port, maxsize=16, block=True)
    posted_at: dict[str, float] = {}
    post_ms: list[float] = []
    get_ms: list[float] = []
    errors = [0]
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def one(i: int) -> None:
        key = str(uuid.uuid4())
        body = {
            "accountId": "ACC-001" if i % 2 else "ACC-002",
            "symbol": ("AAPL", "MSFT", "SPY")[i % 3],
            "side": "BUY" if i % 3 else "SELL",
            "type": "MARKET",
            "quantity": 1 + i % 5,
            "timeInForce": "DAY",
            "strategyId": run,
            "clientOrderId": key,
        }
        sent = time.time()
        t0 = time.perf_counter()
        answer = pool_of_connections.request("POST", "/orders", body=json.dumps(body), headers=headers, timeout=30)
        t1 = time.perf_counter()
        if answer.status != 201:
            with lock:
                errors[0] += 1
            return
        order_id = json.loads(answer.data)["id"]
        t2 = time.perf_counter()
        got = pool_of_connections.request("GET", f"/orders/{order_id}", headers=headers, timeout=30)
        t3 = time.perf_counter()
        with lock:
            posted_at[key] = sent
            post_ms.append(1000 * (t1 - t0))
            if got.status == 200:
                get_ms.append(1000 * (t3 - t2))
            else:
                errors[0] += 1

    total = int(rate * seconds)
    with ThreadPoolExecutor(max_workers=16) as pool:
        started = time.perf_counter()
        for i in range(total):
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))  # the open-loop schedule
            pool.submit(one, i)
    return posted_at, post_ms, get_ms, errors[0]


def run_rest(args: argparse.Namespace) -> dict[str, Any]:
    """REST mode: orders POSTed at ``--rate``/s through the REST server process, GET after each POST."""
    from services.api.auth import SCOPE_READ, SCOPE_WRITE, TokenService

    port = _free_port()
    api = ProcessSpec(
        "api",
        "services.api",
        ("--rest-only", "--host", "127.0.0.1", "--rest-port", str(port), "--workers", str(args.rest_workers)),
        {"OMS_JWT_SECRET": BENCH_SECRET, "OMS_JWT_ISSUER": "oms"},
    )
    env = _env(args.batch, args.venue_latency_ms)
    with sandbox(
        infra.ensure_started(), with_venue=True, env=env, label="oms_bench", replicas=args.replicas, extra=[api]
    ) as box:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/health/live", 60, lambda: box.supervisor.running["api"].popen.poll() is None)
        history = _history(box, args.history)
        _warm_up(box, args.timeout)
        token = TokenService(BENCH_SECRET, "oms").issue(
            "bench", ["*"], [SCOPE_READ, SCOPE_WRITE], ttl=timedelta(hours=4)
        )
        _rest_load(base, token, f"warm-{uuid.uuid4().hex[:8]}", args.rate, 2)  # warm the gunicorn workers
        run = f"bench-{uuid.uuid4().hex[:12]}"
        window = Window(box)
        window.idle(args.idle)
        window.begin()
        profiler = _start_profile(args, box, min(args.seconds, args.profile_seconds))
        posted_at, post_ms, get_ms, errors = _rest_load(base, token, run, args.rate, args.seconds)
        asyncio.run(_wait_settled(box, run, len(posted_at), time.perf_counter() + args.timeout))
        window.end()
        result = window.result(max(1, len(posted_at)))
        _finish_profile(profiler, result)
        result["http_errors"] = errors
        result["latency_ms"] = {
            "post_orders": summarize(post_ms),
            "get_order": summarize(get_ms),
            "post_to_filled": summarize(_filled_latencies_ms(box, run, posted_at)),
        }
        result["history"] = history
        return result


# --- output ---------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def table(result: Mapping[str, Any]) -> str:
    """The human-readable report of one measurement."""
    lines = [
        f"orders: {result['orders']}   window: {result['window_seconds']:.2f}s   "
        f"throughput: {result['throughput_orders_per_s']:.1f} orders/s   cores busy: {result['cores_busy']:.2f}",
        "",
        f"{'process':<22}{'CPU ms/order':>14}{'CPU s':>10}{'procs':>7}{'idle ms/s':>11}{'net ms/order':>14}",
    ]
    members = result.get("processes_per_group", {})
    idle = result.get("idle_cpu_ms_per_s", {})
    net = result.get("cpu_ms_per_order_net_of_idle", {})
    for name, ms in result["cpu_ms_per_order"].items():
        extra = f"{idle[name]:>11.1f}{net[name]:>14.2f}" if name in idle and name in net else ""
        lines.append(f"{name:<22}{ms:>14.2f}{result['cpu_seconds'][name]:>10.2f}{members.get(name, 0):>7}{extra}")
    net_total = f"{sum(idle.values()):>11.1f}{sum(net.values()):>14.2f}" if idle and net else ""
    lines.append(
        f"{'total':<22}{result['cpu_ms_per_order_total']:>14.2f}" + (f"{'':>17}{net_total}" if net_total else "")
    )
    lines.append(f"{'  of which OMS procs':<22}{result['cpu_ms_per_order_oms_processes']:>14.2f}")
    lines.append(f"{'(bench client)':<22}{result['bench_client_cpu_ms_per_order']:>14.2f}   not in the total")
    lines.append("")
    lines.append(f"{'exchange':<22}{'msgs/order':>14}")
    for name, count in result["messages_per_order"].items():
        lines.append(f"{name:<22}{count:>14.2f}")
    lines.append(f"{'total':<22}{result['messages_per_order_total']:>14.2f}   (marketdata: venue feed, by time)")
    for label, stats in result.get("latency_ms", {}).items():
        if stats.get("count"):
            lines.append(
                f"latency {label:<24} n={stats['count']:<6} p50 {stats['p50']:8.1f}  p90 {stats['p90']:8.1f}  "
                f"p99 {stats['p99']:8.1f}  max {stats['max']:8.1f} ms"
            )
    lines.append(f"note: {SHARED_NOTE}")
    return "\n".join(lines)


def flatten(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON document by dotted path (lists by index)."""
    out: dict[str, float] = {}
    if isinstance(data, bool):
        return out
    if isinstance(data, int | float):
        out[prefix] = float(data)
    elif isinstance(data, Mapping):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out.update(flatten(value, f"{prefix}[{index}]"))
    return out


_COMPARED = ("result.", "baseline.")
_SKIPPED = ("loadavg", "server_pids", "processes_per_group", "runs_orders_per_s", "history", "profile")


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Each figure of two bench JSON files side by side, with B/A."""
    fa, fb = flatten(a), flatten(b)
    keys = [k for k in sorted({*fa, *fb}) if k.startswith(_COMPARED) and not any(part in k for part in _SKIPPED)]
    width = max((len(k) for k in keys), default=10) + 2
    lines = [f"{'figure':<{width}}{'A':>12}{'B':>12}{'B/A':>8}"]
    for key in keys:
        va, vb = fa.get(key), fb.get(key)
        ratio = f"{vb / va:8.2f}" if va and vb is not None else f"{'-':>8}"
        sa = f"{va:12.2f}" if va is not None else f"{'-':>12}"
        sb = f"{vb:12.2f}" if vb is not None else f"{'-':>12}"
        lines.append(f"{key:<{width}}{sa}{sb}{ratio}")
    return "\n".join(lines)


def _tear_down_on_sigterm() -> None:
    """SIGTERM (``timeout``, ``kill``) ends the bench as Ctrl-C does: through its ``finally`` blocks, so the
    sandbox's processes are stopped and its database and vhost dropped. Python's default would end the process
    where it stands and leave them behind, the vhost's quorum queues costing the broker CPU in every later run.
    A second SIGTERM during the teardown is ignored; SIGKILL still ends it at once."""

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str]) -> int:
    """Entry point of ``oms bench``."""
    parser = argparse.ArgumentParser(
        prog="oms bench",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[5:15]) if __doc__ else None,
    )
    parser.add_argument("--orders", type=int, default=2000, help="throughput mode: orders per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=1, help="throughput mode: runs, median reported (default 1)")
    parser.add_argument("--batch", type=int, default=200, help="OMS_BATCH_SIZE under test (default 200)")
    parser.add_argument(
        "--baseline-orders", type=int, default=0, help="also run batches of one with this many orders (default: no)"
    )
    parser.add_argument("--rate", type=float, help="fixed-rate mode: decisions (or POSTs with --rest) per second")
    parser.add_argument(
        "--seconds", type=float, help="fixed-rate mode: how long to publish (default 60; --floor: 10 per step)"
    )
    parser.add_argument("--rest", action="store_true", help="POST orders through the REST server (needs --rate)")
    parser.add_argument("--rest-workers", type=int, default=2, help="gunicorn workers of the REST server (default 2)")
    parser.add_argument("--history", type=int, default=0, help="preload N FILLED orders of history first")
    parser.add_argument(
        "--idle",
        type=float,
        default=10,
        help="seconds of CPU reading with no orders first, the fixed cost (default 10)",
    )
    parser.add_argument("--venue-latency-ms", type=int, default=0, help="simulated venue latency (default 0)")
    parser.add_argument(
        "--profile",
        type=lambda v: [n.strip() for n in v.split(",") if n.strip()],
        default=[],
        metavar="NAMES",
        help="py-spy these processes during the window, e.g. execution_handler,settlement",
    )
    parser.add_argument("--profile-seconds", type=float, default=20, help="how long py-spy records (default 20)")
    parser.add_argument(
        "--profile-nonblocking", action="store_true", help="py-spy without pausing the processes (less accurate)"
    )
    parser.add_argument("--profile-dir", help="where py-spy's collapsed stacks go (default .data/bench/profile-*)")
    parser.add_argument(
        "--replicas",
        type=parse_replicas,
        default={},
        metavar="STAGE=N,...",
        help="run N replicas of these stages (e.g. execution_handler=2,settlement=2; `all=2`: every stage)",
    )
    bench_floor.add_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print two JSON results side by side")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)

    if args.compare:
        with open(args.compare[0]) as fa, open(args.compare[1]) as fb:
            print(compare(json.load(fa), json.load(fb)))
        return 0
    if args.rest and not args.rate:
        parser.error("--rest needs --rate")
    if args.floor and (args.rest or args.history or args.profile or args.replicas):
        parser.error("--floor measures the building blocks alone: no --rest, --history, --profile or --replicas")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be above 0")
    if args.seconds is None:
        args.seconds = 10 if args.floor else 60
    if args.seconds <= 0:
        parser.error("--seconds must be above 0")
    _tear_down_on_sigterm()

    document: dict[str, Any] = {
        "format": "oms-bench/1",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "compare")},
        "machine": machine(),
        "note": SHARED_NOTE,
    }
    if args.floor:
        document["mode"] = "floor"
        rate = args.rate or 50
        print(f"floor: each building block alone, paced at {rate:g}/s for {args.seconds:g}s")
        document["result"] = bench_floor.run_floor(infra.ensure_started(), rate, args.seconds, args.idle)
    elif args.rest:
        document["mode"] = "rest"
        print(f"REST: {args.rate:g} POST/s for {args.seconds:g}s through the REST server, batch {args.batch}")
        document["result"] = run_rest(args)
    elif args.rate:
        document["mode"] = "rate"
        print(f"fixed rate: {args.rate:g} decisions/s for {args.seconds:g}s, batch {args.batch}")
        document["result"] = run_rate(args)
    else:
        document["mode"] = "throughput"
        if args.baseline_orders > 0:
            print("baseline: batches of 1 (one transaction per message per stage)")
            document["baseline"] = run_throughput(args, 1, args.baseline_orders)
        print(f"throughput: {args.orders} decisions as fast as possible, batches of up to {args.batch}")
        document["result"] = run_throughput(args, args.batch, args.orders)
    print()
    print(bench_floor.floor_table(document["result"]) if args.floor else table(document["result"]))
    if "baseline" in document:
        base, batched = document["baseline"], document["result"]
        print(
            f"\nbatch 1: {base['throughput_orders_per_s']:.0f} orders/s, {base['cpu_ms_per_order_total']:.1f} ms "
            f"CPU/order; batch {args.batch}: {batched['throughput_orders_per_s']:.0f} orders/s -> ratio "
            f"{batched['throughput_orders_per_s'] / base['throughput_orders_per_s']:.1f}x"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2, default=str)
        print(f"\nwrote {args.json}")
    return 0
