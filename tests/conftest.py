"""Session fixtures shared by every test: real servers, a fresh database and a fresh vhost per session.

Where the servers come from, in order of preference:
1. ``OMS_TEST_DATABASE_URL`` + ``OMS_TEST_AMQP_URL`` (+ ``OMS_TEST_MANAGEMENT_URL``), as ``./oms test`` sets;
2. throwaway containers (testcontainers) when a Docker engine answers;
3. the project's local servers (``tools.infra.ensure_started()``).

Every fixture is lazy: nothing starts unless a test asks for it, so ``tests/unit`` runs without servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tools.infra import InfraUrls

TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder, so ``-m "not integration and not e2e"`` selects the unit tests."""
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if folder in {"integration", "e2e", "fault", "browser"}:
            item.add_marker(folder)


def _session_name() -> str:
    return f"oms_test_{uuid.uuid4().hex[:12]}"


def _containers() -> Iterator[InfraUrls]:
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.rabbitmq import RabbitMqContainer

    from tools.infra import InfraUrls

    postgres = PostgresContainer("postgres:15", username="oms", password="oms", dbname="oms", driver="psycopg")
    rabbitmq = RabbitMqContainer("rabbitmq:4.1-management").with_exposed_ports(15672)
    with postgres, rabbitmq:
        host = rabbitmq.get_container_host_ip()
        yield InfraUrls(
            database_url=postgres.get_connection_url(),
            amqp_url=f"amqp://guest:guest@{host}:{rabbitmq.get_exposed_port(5672)}/",
            management_url=f"http://{host}:{rabbitmq.get_exposed_port(15672)}/",
        )


@pytest.fixture(scope="session")
def infra_urls() -> Iterator[InfraUrls]:
    """The servers' URLs (server level: the ``oms`` database and the default vhost)."""
    from tools import infra

    database, amqp = os.environ.get("OMS_TEST_DATABASE_URL"), os.environ.get("OMS_TEST_AMQP_URL")
    if database and amqp:
        yield infra.InfraUrls(database, amqp, os.environ.get("OMS_TEST_MANAGEMENT_URL", ""))
    elif infra.docker_engine_answers():
        yield from _containers()
    else:
        yield infra.ensure_started()


@pytest.fixture(scope="session")
def database_url(infra_urls: InfraUrls) -> Iterator[str]:
    """A database of its own for this test session, migrated to head, dropped at the end."""
    from tools import infra, migrate

    name = _session_name()
    url = infra.create_database(name, infra_urls.database_url)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        infra.drop_database(name, infra_urls.database_url)


@pytest.fixture(scope="session")
def amqp_url(infra_urls: InfraUrls) -> Iterator[str]:
    """A vhost of its own for this test session (guest has full rights on it), deleted at the end."""
    from tools import infra

    if not infra_urls.management_url:
        # No management API to make a vhost with: share the one given.
        yield infra_urls.amqp_url
        return
    name = _session_name()
    infra.create_vhost(name, infra_urls.management_url)
    try:
        yield infra.amqp_url_for_vhost(infra_urls.amqp_url, name)
    finally:
        infra.delete_vhost(name, infra_urls.management_url)
