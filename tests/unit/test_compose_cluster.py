"""docker-compose.yml's cluster profile, read as compose reads it (no Docker engine needed): three RabbitMQ nodes
that share one Erlang cookie from a secret, find one another by classic-config peer discovery under names that
resolve on the compose network, keep their data apart, and processes that may fail over among them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import secrets

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")
COOKIE = "/var/lib/rabbitmq/.erlang.cookie"


def _conf(path: Path) -> dict[str, str]:
    """A rabbitmq.conf file's settings (comments dropped)."""
    conf = {}
    for line in path.read_text().splitlines():
        key, _, value = line.split("#", 1)[0].partition("=")
        if key.strip():
            conf[key.strip()] = value.strip()
    return conf


def _mounted(service: dict[str, Any], target: str) -> Path | None:
    """The file of this repository mounted at ``target`` in the service, None when nothing is."""
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == target and source.startswith("./"):
            return REPO / source
    return None


def _hostnames(name: str) -> set[str]:
    """The names another container reaches service ``name`` by: the service name and its network aliases."""
    aliases = SERVICES[name].get("networks", {}).get("default", {}) or {}
    return {name, *aliases.get("aliases", [])}


def test_nodes_2_and_3_are_the_cluster_profile_node_1_is_always_there() -> None:
    assert "profiles" not in SERVICES["rabbitmq"]
    for name in ("rabbitmq-2", "rabbitmq-3", "rabbitmq-cluster-init"):
        assert SERVICES[name]["profiles"] == ["cluster"]
    for name in NODES:
        assert SERVICES[name]["image"] == SERVICES["rabbitmq"]["image"]


@pytest.mark.parametrize("name", [*NODES, "rabbitmq-cluster-init"])
def test_every_node_and_its_cli_share_the_cookie_secret(name: str) -> None:
    service = SERVICES[name]
    wanted = {s if isinstance(s, str) else s["source"] for s in service["secrets"]}
    assert "rabbitmq_erlang_cookie" in wanted
    shell, flag, script, *_ = service["entrypoint"]
    assert (shell, flag) == ("sh", "-c")
    # Installed owner-only (Erlang refuses a cookie others may read) where the server and root's CLI read it,
    # then the image's entrypoint; `$$` is compose's escape for the shell's `$`.
    assert f"install -m 600 /run/secrets/rabbitmq_erlang_cookie {COOKIE}" in script
    assert script.endswith('exec docker-entrypoint.sh "$$@"')
    assert COMPOSE["secrets"]["rabbitmq_erlang_cookie"]["file"] == "./secrets/rabbitmq-erlang-cookie.txt"
    assert "rabbitmq-erlang-cookie.txt" in secrets.PLAIN_SECRETS  # `./oms secrets init` makes it


def test_the_peers_are_the_three_nodes_by_names_that_resolve() -> None:
    peers_file = _mounted(SERVICES["rabbitmq-2"], "/etc/rabbitmq/conf.d/40-cluster-peers.conf")
    assert peers_file is not None
    conf = _conf(peers_file)
    assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    peers = {value for key, value in conf.items() if key.startswith("cluster_formation.classic_config.nodes.")}
    node_names = {f"rabbit@{SERVICES[name]['hostname']}" for name in NODES}
    assert peers == node_names
    for name in NODES:
        # A node's name is rabbit@<its hostname>: the others must resolve that hostname on the network.
        assert SERVICES[name]["hostname"] in _hostnames(name)
    assert _mounted(SERVICES["rabbitmq-3"], "/etc/rabbitmq/conf.d/40-cluster-peers.conf") == peers_file
    # Node 1 forms the cluster the others join: they start once it is healthy.
    for name in ("rabbitmq-2", "rabbitmq-3"):
        assert SERVICES[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", NODES)
def test_every_node_spreads_leaders_grows_members_and_loads_the_same_definitions(name: str) -> None:
    service = SERVICES[name]
    cluster = _mounted(service, "/etc/rabbitmq/conf.d/30-cluster.conf")
    assert cluster is not None
    conf = _conf(cluster)
    assert conf["queue_leader_locator"] == "balanced"
    assert conf["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
    assert conf["quorum_queue.continuous_membership_reconciliation.target_group_size"] == "3"
    assert _mounted(service, "/etc/rabbitmq/definitions.d/10-topology.json") == REPO / "ops/rabbitmq-definitions.json"
    assert _mounted(service, "/etc/rabbitmq/conf.d/20-oms.conf") == REPO / "ops/rabbitmq.conf"
    users = [s for s in service["secrets"] if isinstance(s, dict) and s["source"] == "rabbitmq_users"]
    assert users and users[0]["target"] == "/etc/rabbitmq/definitions.d/20-users.json"


def test_each_node_has_its_own_data_and_host_ports() -> None:
    data = [next(v for v in SERVICES[name]["volumes"] if v.endswith(":/var/lib/rabbitmq")) for name in NODES]
    assert len(set(data)) == len(NODES)
    for volume in data:
        assert volume.split(":")[0] in COMPOSE["volumes"]
    ports = [port.rsplit(":", 1)[0] for name in NODES for port in SERVICES[name]["ports"]]
    assert len(ports) == len(set(ports))


def test_the_init_step_grows_and_rebalances_once_nodes_2_and_3_run() -> None:
    init = SERVICES["rabbitmq-cluster-init"]
    script = init["command"][-1]
    for node in ("rabbit@rabbitmq-2", "rabbit@rabbitmq-3"):
        assert re.search(rf"rabbitmq-queues -n rabbit@oms-rabbit grow {node} all", script)
    assert script.rstrip().endswith("rebalance quorum")
    assert {dep: cond["condition"] for dep, cond in init["depends_on"].items()} == {
        "rabbitmq-2": "service_healthy",
        "rabbitmq-3": "service_healthy",
    }


def test_the_processes_take_the_cluster_nodes_from_the_environment() -> None:
    env = COMPOSE["x-worker"]["environment"]
    assert env["OMS_AMQP_NODES"] == "${OMS_AMQP_NODES:-}"
    assert "OMS_AMQP_NODES=rabbitmq:5672,rabbitmq-2:5672,rabbitmq-3:5672" in (REPO / "docker-compose.yml").read_text()
