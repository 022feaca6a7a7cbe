"""A local RabbitMQ cluster: N nodes on this host (``./oms infra start --rabbit-nodes 3``), and the node faults
the failure tests inject (:func:`kill_node`, :func:`start_node`, :func:`stop_node`).

Each node is a node of tools/infra/rabbitmq.py, with what sets it apart derived from the instance's settings
(``OMS_AMQP_PORT``, ``OMS_RABBITMQ_MGMT_PORT``, ``OMS_RABBITMQ_DIST_PORT``, ``OMS_RABBITMQ_NODENAME``,
``OMS_DATA_DIR``); node ``i`` (1-based) takes:

- name ``<name><i>@<host>`` (``oms-rabbit@localhost`` gives ``oms-rabbit1@localhost`` ...);
- AMQP, management and distribution ports: the configured ones plus ``i - 1``;
- data folder ``<data dir>/rabbitmq-<i>`` (the standalone node keeps ``<data dir>/rabbitmq``).

Node 1 answers on the configured ports, so whatever knows the one-node URLs reaches the cluster; the processes
get every node in ``OMS_AMQP_NODES`` (:attr:`InfraUrls.amqp_nodes`) and move to another when theirs is lost.

All nodes run as the same OS user (``rabbitmq`` when we are root), so they read the same Erlang cookie (that
user's ``~/.erlang.cookie``) and the CLI tools with them. A blank node joins the cluster by classic-config peer
discovery (every node lists all nodes, node 1 first, and node 1 boots first); :func:`start` checks membership
and joins a node that formed a cluster of its own with ``rabbitmqctl join_cluster``.

The topology (ops/rabbitmq-definitions.json) is imported once every node runs, so each quorum queue has a
member on each node (up to ``x-quorum-initial-group-size``, 3) and its leader on the node leading the fewest
(``queue_leader_locator = balanced``). The users and their passwords are the instance's, as for one node
(``secrets_dir``). The cluster's size is remembered in the data folder (``rabbitmq-nodes``): a later
``./oms infra start`` or ``./oms up`` without ``--rabbit-nodes`` finds the same cluster, and stop and status
handle every node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tools.infra import rabbitmq
from tools.infra.settings import HOST, InfraError, InfraUrls, ServerSettings, ServerStatus
from tools.infra.system import pid_alive, print_progress, run, wait_until

NODES_FILE = "rabbitmq-nodes"
MAX_NODES = 9
_T = TypeVar("_T")


# ------------------------------------------------------------------------------------------------ the layout


def node_settings(settings: ServerSettings, index: int, count: int) -> ServerSettings:
    """Node ``index`` (1-based) of a ``count``-node cluster of the instance ``settings`` describe."""
    if not 1 <= index <= count:
        raise InfraError(f"rabbitmq: node {index} is not one of 1..{count}")
    return dataclasses.replace(
        settings,
        amqp_port=settings.amqp_port + index - 1,
        management_port=settings.management_port + index - 1,
        dist_port=settings.dist_port + index - 1,
        nodename=_name(settings.nodename, index),
        rabbit_dir_name=f"rabbitmq-{index}",
        rabbit_peers=tuple(_name(settings.nodename, i) for i in range(1, count + 1)),
    )


def _name(nodename: str, index: int) -> str:
    name, _, host = nodename.partition("@")
    return f"{name}{index}@{host}" if host else f"{name}{index}"


def nodes(settings: ServerSettings, count: int | None = None) -> list[ServerSettings]:
    """Every node of the instance's cluster (``count`` default: the size remembered)."""
    size = count if count is not None else node_count(settings)
    return [node_settings(settings, i, size) for i in range(1, size + 1)]


def node_count(settings: ServerSettings, requested: int | None = None) -> int:
    """How many nodes the instance's broker has: ``requested``, else the size its cluster was started with
    (remembered in the data folder), else 1."""
    if requested is not None:
        if not 1 <= requested <= MAX_NODES:
            raise InfraError(f"--rabbit-nodes {requested}: between 1 and {MAX_NODES}")
        return requested
    try:
        return int((settings.data_dir / NODES_FILE).read_text().strip())
    except (OSError, ValueError):
        return 1


def _remember(settings: ServerSettings, count: int) -> None:
    marker = settings.data_dir / NODES_FILE
    if count > 1:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{count}\n")
    else:
        marker.unlink(missing_ok=True)


def amqp_nodes(settings: ServerSettings, count: int) -> str:
    """``OMS_AMQP_NODES`` of the cluster's processes: every node's AMQP address, node 1 first."""
    return ",".join(f"{HOST}:{node.amqp_port}" for node in nodes(settings, count))


def tool_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """For an ``./oms`` tool run against a local instance whose broker is a cluster: ``OMS_AMQP_NODES``, so the
    tool reaches a node that runs when node 1 is down, unless the environment names the nodes or another broker
    itself. Empty for one node, and with docker compose."""
    if environ.get("OMS_INFRA", "").lower() == "docker":
        return {}
    if environ.get("OMS_AMQP_NODES", "").strip() or environ.get("OMS_AMQP_URL", "").strip():
        return {}
    try:
        settings = ServerSettings.from_env()
    except InfraError:
        return {}  # a bad port variable: the command itself reports it
    count = node_count(settings)
    return {"OMS_AMQP_NODES": amqp_nodes(settings, count)} if count > 1 else {}


def urls(settings: ServerSettings, count: int) -> InfraUrls:
    """Where the cluster answers: node 1's URLs, and every node's AMQP address."""
    return dataclasses.replace(settings.urls, amqp_nodes=amqp_nodes(settings, count) if count > 1 else "")


def _has_data(node: ServerSettings) -> bool:
    mnesia = node.rabbit_dir / "mnesia"
    return mnesia.is_dir() and any(mnesia.iterdir())


def _parallel(calls: list[Callable[[], _T]]) -> list[_T]:
    """Run ``calls`` at once (each waits on a booting or stopping node), results in order; the first error is
    raised once all have ended."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


# --------------------------------------------------------------------------------------- the whole cluster


def start(settings: ServerSettings, count: int) -> str:
    """Start a ``count``-node cluster unless it runs, make sure every node is a member, import the topology
    (idempotent; queues get a member on each node) and the processes' users; returns what was done."""
    if count < 2:
        raise InfraError("rabbit_cluster.start: a cluster has 2 nodes or more")
    if pid_alive(settings.rabbit_pid_file, "beam") is not None:
        raise InfraError(
            f"rabbitmq: the single node of {settings.data_dir} runs (node {settings.nodename}); "
            "`./oms infra stop` first, then start the cluster"
        )
    _remember(settings, count)
    members = nodes(settings, count)
    began = time.monotonic()
    first, rest = members[0], members[1:]
    if _has_data(first):
        # A restart: every node boots at once. A node that was not the last one stopped waits at boot for the
        # peers it last saw, so waiting for node 1 before starting the others could wait for ever.
        states = _parallel([functools.partial(rabbitmq._start, node) for node in members])
    else:
        # Blank: node 1 first, alone, so that the others find it running and join it rather than one another.
        states = [rabbitmq._start(first)]
        states += _parallel([functools.partial(rabbitmq._start, node) for node in rest])
    joined = _ensure_members(members)
    base = first.urls.management_url
    rabbitmq.load_topology(base)
    rabbitmq.ensure_process_users(base, folder=rabbitmq.secrets_dir(settings))
    lines = [f"{node.nodename}: {state}" for node, state in zip(members, states, strict=True)]
    if joined:
        lines.append(f"joined with rabbitmqctl join_cluster: {', '.join(joined)}")
    lines.append(f"cluster of {count} running in {time.monotonic() - began:.1f}s")
    return "; ".join(lines)


def stop(settings: ServerSettings) -> str:
    """Stop every node of the instance that runs: the cluster's (all at once) and the single node; returns what
    was done ("not running" when nothing ran)."""
    members = [node for node in _known_nodes(settings) if pid_alive(node.rabbit_pid_file, "beam") is not None]
    states = _parallel([functools.partial(rabbitmq.stop, node) for node in members])
    done = [f"{node.nodename}: {state}" for node, state in zip(members, states, strict=True)]
    if pid_alive(settings.rabbit_pid_file, "beam") is not None:
        done.append(f"{settings.nodename}: {rabbitmq.stop(settings)}")
    return "; ".join(done) or "not running"


def _known_nodes(settings: ServerSettings) -> list[ServerSettings]:
    """The remembered cluster's nodes, or as many as there are node folders (a marker removed by hand)."""
    count = node_count(settings)
    while (settings.data_dir / f"rabbitmq-{count + 1}").is_dir() and count < MAX_NODES:
        count += 1
    return nodes(settings, count) if count > 1 else []


def status(settings: ServerSettings) -> list[ServerStatus]:
    """One line per node (``rabbitmq node i``), with the nodes the cluster counts as running."""
    members = nodes(settings)
    running = running_nodes(settings)
    states = []
    for i, node in enumerate(members, 1):
        state = rabbitmq.status(node)
        member = "member, running" if node.nodename in running else "not running in the cluster"
        states.append(ServerStatus(f"rabbitmq node {i}", state.running, f"{member}; {state.detail}"))
    return states


def running_nodes(settings: ServerSettings, count: int | None = None) -> set[str]:
    """The names of the nodes the cluster reports running, asked of the first node that answers its management
    API (empty when none does)."""
    for node in nodes(settings, count):
        running = _running_on(node)
        if running:
            return running
    return set()


def _running_on(node: ServerSettings, timeout: float = 2.0) -> set[str]:
    """The running nodes as ``node``'s management API lists them (empty when it does not answer)."""
    with contextlib.suppress(Exception):
        return {str(n["name"]) for n in rabbitmq._management_get(node, "api/nodes", timeout) if n.get("running")}
    return set()


def cluster_status(settings: ServerSettings, index: int = 1, count: int | None = None) -> dict[str, Any]:
    """``rabbitmqctl cluster_status`` of node ``index``, as its JSON (``running_nodes``, ``disk_nodes`` ...)."""
    node = node_settings(settings, index, count or node_count(settings))
    result = run(_ctl(node, "cluster_status", "--formatter", "json"), env=rabbitmq._env(node), timeout=60)
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _ctl(node: ServerSettings, *args: str) -> list[str]:
    return [rabbitmq._script("rabbitmqctl"), "-n", node.nodename, *args]


def _ensure_members(members: list[ServerSettings]) -> list[str]:
    """Join to node 1 every node the cluster does not list running (a blank node that found no peer formed a
    cluster of its own); returns the names joined."""
    first = members[0]
    listed = _running_on(first, timeout=10)
    joined = []
    for node in members[1:]:
        if node.nodename in listed:
            continue
        print_progress(f"infra: {node.nodename} is not in {first.nodename}'s cluster; joining it")
        env = rabbitmq._env(node)
        run(_ctl(node, "stop_app"), env=env, timeout=node.timeout)
        run(_ctl(node, "join_cluster", first.nodename), env=env, timeout=node.timeout)
        run(_ctl(node, "start_app"), env=env, timeout=node.timeout)
        joined.append(node.nodename)
    names = {node.nodename for node in members}
    wait_until(
        lambda: names <= _running_on(first),
        what="rabbitmq cluster",
        deadline=time.monotonic() + first.timeout,
        log=first.rabbit_log,
    )
    return joined


# ------------------------------------------------------------------------------------------ one node's faults


def node_pid(index: int, settings: ServerSettings | None = None) -> int | None:
    """The OS pid of node ``index``'s Erlang VM, None when it does not run."""
    node = _node(index, settings)
    return pid_alive(node.rabbit_pid_file, "beam")


def kill_node(index: int, settings: ServerSettings | None = None) -> int:
    """``kill -9`` node ``index``'s Erlang VM (no shutdown of any kind: a crash, a lost machine) and wait until
    it is gone; returns the pid killed."""
    node = _node(index, settings)
    pid = pid_alive(node.rabbit_pid_file, "beam")
    if pid is None:
        raise InfraError(f"rabbitmq: node {index} ({node.nodename}) is not running")
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: pid_alive(node.rabbit_pid_file, "beam") is None,
        what=f"rabbitmq node {index} exit after SIGKILL",
        deadline=time.monotonic() + 30,
        log=node.rabbit_log,
    )
    return pid


def start_node(index: int, settings: ServerSettings | None = None) -> str:
    """Start node ``index`` again (it rejoins its cluster from its own data) and wait until its management API
    answers and the cluster counts it running."""
    base = settings or ServerSettings.from_env()
    node = _node(index, base)
    state = rabbitmq._start(node)
    wait_until(
        lambda: node.nodename in running_nodes(base),
        what=f"rabbitmq node {index} rejoining",
        deadline=time.monotonic() + node.timeout,
        log=node.rabbit_log,
    )
    return state


def stop_node(index: int, settings: ServerSettings | None = None) -> str:
    """Stop node ``index`` cleanly (``rabbitmqctl stop``)."""
    return rabbitmq.stop(_node(index, settings))


def _node(index: int, settings: ServerSettings | None) -> ServerSettings:
    base = settings or ServerSettings.from_env()
    count = node_count(base)
    if count < 2:
        raise InfraError(f"rabbitmq: {base.data_dir} has no cluster (`./oms infra start --rabbit-nodes 3`)")
    return node_settings(base, index, count)


def node_dir(index: int, settings: ServerSettings | None = None) -> Path:
    """Node ``index``'s data folder."""
    return _node(index, settings).rabbit_dir


# ------------------------------------------------------------------------------ what tools/infra/servers.py calls


def ensure_broker(settings: ServerSettings, requested: int | None = None) -> tuple[str, InfraUrls]:
    """Start the instance's broker unless it runs: one node (tools/infra/rabbitmq.py, the default) or a cluster
    of ``requested`` nodes (None: as many as it was last started with); what was done, and where it answers."""
    count = node_count(settings, requested)
    if count > 1:
        return start(settings, count), urls(settings, count)
    running = [node.nodename for node in _known_nodes(settings) if pid_alive(node.rabbit_pid_file, "beam")]
    if running:
        raise InfraError(
            f"rabbitmq: the cluster of {settings.data_dir} runs ({', '.join(running)}); `./oms infra stop` first, "
            "then start one node"
        )
    _remember(settings, 1)
    return rabbitmq.start(settings), settings.urls


def broker_status(settings: ServerSettings) -> list[ServerStatus]:
    """The broker's state: the single node's, or one line per node of the cluster."""
    return status(settings) if node_count(settings) > 1 else [rabbitmq.status(settings)]


def broker_urls(settings: ServerSettings) -> InfraUrls:
    """Where the instance's broker answers (with every node's address when it is a cluster)."""
    return urls(settings, node_count(settings))
