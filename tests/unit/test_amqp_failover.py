"""Clients over several RabbitMQ nodes (``OMS_AMQP_NODES``, common/messaging/connection.py) and the local cluster's
layout (tools/infra/rabbit_cluster.py), without a broker: the URLs each node gets, the robust connection's turn to
the next node after each failed attempt, and what a cluster node is configured with.

The failover on a real cluster, with a node killed, is tests/integration/test_rabbit_cluster.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, cast

import aio_pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from yarl import URL

from common.messaging import connection as amqp_connection
from common.messaging.connection import FailoverConnection, connect, connect_once, node_urls
from common.settings import ConfigurationError, InfraSettings, amqp_node_urls, load_settings
from common.tls import pika_broker_options
from tools.infra import rabbit_cluster, rabbitmq
from tools.infra.settings import InfraError, ServerSettings


def _refused_port() -> int:
    """A port nothing listens on (bound, then released): a connection to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ----------------------------------------------------------------------------------------------- the settings


def test_each_node_gets_the_urls_login_vhost_and_options() -> None:
    url = "amqps://oms-router:p%40ss@10.0.0.1:5671/prod?cafile=/etc/oms/ca.pem"
    urls = amqp_node_urls(url, ["10.0.0.1:5671", "10.0.0.2:5671", "10.0.0.3:5671"])
    assert urls == (
        url,
        "amqps://oms-router:p%40ss@10.0.0.2:5671/prod?cafile=/etc/oms/ca.pem",
        "amqps://oms-router:p%40ss@10.0.0.3:5671/prod?cafile=/etc/oms/ca.pem",
    )


def test_the_urls_own_node_is_not_repeated_and_comes_first() -> None:
    # No port in the URL: the scheme's default is its node's.
    assert amqp_node_urls("amqp://rabbitmq/", ["rabbitmq-2:5672", "rabbitmq:5672", "rabbitmq-2:5672"]) == (
        "amqp://rabbitmq/",
        "amqp://rabbitmq-2:5672/",
    )
    assert amqp_node_urls("amqp://u:p@h:1/", []) == ("amqp://u:p@h:1/",)


def test_oms_amqp_nodes_is_a_comma_list_of_host_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_AMQP_URL", "amqp://guest:guest@127.0.0.1:56771/")
    monkeypatch.setenv("OMS_AMQP_NODES", " 127.0.0.1:56771, 127.0.0.1:56772,127.0.0.1:56773 ")
    infra = load_settings().infra
    assert infra.amqp_nodes == ("127.0.0.1:56771", "127.0.0.1:56772", "127.0.0.1:56773")
    assert [URL(u).port for u in infra.amqp_urls] == [56771, 56772, 56773]
    monkeypatch.setenv("OMS_AMQP_NODES", "rabbitmq-2")
    with pytest.raises(ConfigurationError, match="OMS_AMQP_NODES"):
        load_settings()


def test_without_nodes_there_is_the_one_url_the_login_applied() -> None:
    infra = InfraSettings(amqp_url="amqp://guest:guest@127.0.0.1:56729/", amqp_user="oms-router")
    assert infra.amqp_urls == ("amqp://oms-router:guest@127.0.0.1:56729/",)


def test_dramatiq_gets_every_node_as_pika_parameters() -> None:
    urls = amqp_node_urls("amqp://u:p@127.0.0.1:56771/", ["127.0.0.1:56772", "127.0.0.1:56773"])
    broker = RabbitmqBroker(confirm_delivery=True, **pika_broker_options(";".join(urls)))
    assert [p.port for p in broker.parameters] == [56771, 56772, 56773]
    one = RabbitmqBroker(confirm_delivery=True, **pika_broker_options(";".join(urls[:1])))
    assert cast(Any, one.parameters).port == 56771  # one URL: dramatiq's one set of parameters, as before


# ------------------------------------------------------------------------------------------- the connection


def test_node_urls_takes_one_url_or_several() -> None:
    assert node_urls("amqp://a/") == ("amqp://a/",)
    assert node_urls(["amqp://a/", "amqp://b/"]) == ("amqp://a/", "amqp://b/")
    with pytest.raises(ValueError, match="no AMQP URL"):
        node_urls([])


async def test_a_failover_connection_tries_the_next_node_after_each_failed_attempt() -> None:
    ports = [_refused_port(), _refused_port(), _refused_port()]
    connection = FailoverConnection(
        [URL(f"amqp://guest:guest@127.0.0.1:{port}/?fail_fast=0") for port in ports], reconnect_interval=0.01
    )
    assert connection.node == f"127.0.0.1:{ports[0]}"
    tried: list[str] = []
    connecting = asyncio.ensure_future(connection.connect())  # no fail-fast: it keeps trying, node after node
    deadline = time.monotonic() + 10
    while len(tried) < 5 and time.monotonic() < deadline:
        if not tried or tried[-1] != connection.node:
            tried.append(connection.node)
        await asyncio.sleep(0.001)  # sampling the node it tries, not waiting for a system
    connecting.cancel()
    await connection.close()
    expected = [f"127.0.0.1:{port}" for port in ports]
    assert tried == [*expected, *expected[:2]]


async def test_connect_tries_every_node_before_backing_off_and_gives_up_after_its_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(amqp_connection, "FIRST_DELAY_SECONDS", 60.0)  # a back-off between two nodes would show
    urls = [f"amqp://guest:guest@127.0.0.1:{_refused_port()}/" for _ in range(3)]
    began = time.monotonic()
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError):
        await connect(urls, "oms.test", attempts=3)
    # Three refused nodes, one round: no back-off between them (it comes after a round of every node).
    assert time.monotonic() - began < 30


async def test_connect_once_raises_the_last_nodes_error_when_none_answers() -> None:
    urls = [f"amqp://guest:guest@127.0.0.1:{_refused_port()}/" for _ in range(2)]
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError):
        await connect_once(urls, "oms.test")


# ------------------------------------------------------------------------------------------ the local cluster


def _settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(
        data_dir=tmp_path,
        pg_port=54771,
        amqp_port=56771,
        management_port=15771,
        dist_port=25771,
        nodename="oms-c@localhost",
        timeout=5,
    )


def test_node_i_takes_the_configured_ports_plus_i_minus_1_and_a_folder_and_name_of_its_own(tmp_path: Path) -> None:
    nodes = rabbit_cluster.nodes(_settings(tmp_path), 3)
    assert [n.nodename for n in nodes] == ["oms-c1@localhost", "oms-c2@localhost", "oms-c3@localhost"]
    assert [(n.amqp_port, n.management_port, n.dist_port) for n in nodes] == [
        (56771, 15771, 25771),
        (56772, 15772, 25772),
        (56773, 15773, 25773),
    ]
    assert [n.rabbit_dir for n in nodes] == [tmp_path / f"rabbitmq-{i}" for i in (1, 2, 3)]
    assert all(n.rabbit_peers == ("oms-c1@localhost", "oms-c2@localhost", "oms-c3@localhost") for n in nodes)
    assert rabbit_cluster.amqp_nodes(_settings(tmp_path), 3) == "127.0.0.1:56771,127.0.0.1:56772,127.0.0.1:56773"
    urls = rabbit_cluster.urls(_settings(tmp_path), 3)
    assert urls.amqp_url == "amqp://guest:guest@127.0.0.1:56771/" and urls.amqp_nodes.count(",") == 2
    with pytest.raises(InfraError):
        rabbit_cluster.node_settings(_settings(tmp_path), 4, 3)


def test_a_cluster_node_discovers_its_peers_and_spreads_leaders_a_single_node_is_unchanged(tmp_path: Path) -> None:
    single = rabbitmq._config(_settings(tmp_path))
    assert "cluster_formation" not in single and "queue_leader_locator" not in single
    node = rabbit_cluster.node_settings(_settings(tmp_path), 2, 3)
    conf = rabbitmq._config(node)
    assert "cluster_formation.peer_discovery_backend = classic_config" in conf
    for i in (1, 2, 3):
        assert f"cluster_formation.classic_config.nodes.{i} = oms-c{i}@localhost" in conf
    assert "queue_leader_locator = balanced" in conf
    assert "management.tcp.port = 15772" in conf


def test_a_cluster_node_boots_without_the_queues_which_come_once_all_have_joined(tmp_path: Path) -> None:
    assert rabbitmq._boot_topology(_settings(tmp_path)) == rabbitmq.DEFINITIONS_FILE.read_text()
    boot = json.loads(rabbitmq._boot_topology(rabbit_cluster.node_settings(_settings(tmp_path), 1, 3)))
    assert "queues" not in boot and "bindings" not in boot
    assert boot["vhosts"] and boot["exchanges"] and boot["policies"]


def test_the_cluster_size_is_remembered_and_one_node_is_the_default(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert rabbit_cluster.node_count(settings) == 1
    rabbit_cluster._remember(settings, 3)
    assert rabbit_cluster.node_count(settings) == 3
    assert rabbit_cluster.node_count(settings, 1) == 1
    rabbit_cluster._remember(settings, 1)
    assert rabbit_cluster.node_count(settings) == 1
    with pytest.raises(InfraError):
        rabbit_cluster.node_count(settings, 0)


def test_a_tool_run_against_a_local_cluster_gets_its_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMS_AMQP_PORT", "31769")
    for name in ("OMS_AMQP_NODES", "OMS_AMQP_URL", "OMS_INFRA"):
        monkeypatch.delenv(name, raising=False)
    assert rabbit_cluster.tool_defaults(os.environ) == {}  # one node: nothing to add
    (tmp_path / rabbit_cluster.NODES_FILE).write_text("3\n")
    expected = "127.0.0.1:31769,127.0.0.1:31770,127.0.0.1:31771"
    assert rabbit_cluster.tool_defaults(os.environ) == {"OMS_AMQP_NODES": expected}
    # What the environment says wins: its own nodes, or another broker altogether.
    assert rabbit_cluster.tool_defaults({**os.environ, "OMS_AMQP_URL": "amqp://u:p@broker:5672/"}) == {}
    assert rabbit_cluster.tool_defaults({**os.environ, "OMS_AMQP_NODES": "a:1,b:2"}) == {}
