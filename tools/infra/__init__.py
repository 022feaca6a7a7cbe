"""Local Postgres and RabbitMQ servers for development and tests (``./oms infra start|stop|status``).

The servers run as plain processes with their data under ``.data/`` (``OMS_DATA_DIR``), so no Docker engine
is needed; with ``--docker`` (or ``OMS_INFRA=docker``) and a Docker engine answering, docker compose runs
them instead, on the same ports. The modules, by server and concern:

- ``settings``: ports, folders, logins and URLs, from the environment (``OMS_PG_PORT``, ``OMS_DATA_DIR`` ...);
- ``system``: commands, service users, owned files, ports and waiting, shared by both servers;
- ``postgres``: the local cluster (initdb, pg_ctl, parameters, logins, the ``oms`` role) and databases;
- ``rabbitmq``: the local node (config, plugins, definitions, start and stop), vhosts and the process users;
- ``rabbit_cluster``: a local cluster of RabbitMQ nodes (``--rabbit-nodes 3``) and one node's faults (kill, start);
- ``brokerusers``: the broker users, one per kind of process, and their permissions;
- ``docker``: the docker compose path;
- ``servers``: both servers together (:func:`ensure_started`, :func:`stop`, :func:`status`);
- ``command`` and ``runner``: the ``oms infra`` and ``oms test`` commands.

Other code uses what this package exposes below.
"""

from tools.infra.docker import docker_engine_answers
from tools.infra.postgres import create_database, drop_database, prepare_venue_tables, role_url
from tools.infra.rabbitmq import (
    amqp_url_for_vhost,
    create_vhost,
    delete_vhost,
    ensure_process_users,
    load_topology,
    process_env,
    secrets_dir,
)
from tools.infra.servers import ensure_started, status, stop
from tools.infra.settings import InfraError, InfraUrls, ServerSettings, ServerStatus

__all__ = [
    "InfraError",
    "InfraUrls",
    "ServerStatus",
    "ServerSettings",
    "amqp_url_for_vhost",
    "create_database",
    "create_vhost",
    "delete_vhost",
    "docker_engine_answers",
    "drop_database",
    "ensure_process_users",
    "ensure_started",
    "load_topology",
    "prepare_venue_tables",
    "process_env",
    "role_url",
    "secrets_dir",
    "status",
    "stop",
]
