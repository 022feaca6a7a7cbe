"""The local RabbitMQ node: its environment, config file, plugins, definitions, users, start and stop.

The node loads its definitions at every boot from a folder of its own: the topology (a copy of
ops/rabbitmq-definitions.json) and the users. The users are one per kind of process (tools/infra/brokerusers.py)
with passwords generated into ``<data dir>/secrets/rabbitmq-<kind>.txt`` (mode 600, never committed), the
operator ``oms-admin``, and, this being the local development profile, ``guest``/``guest``, which RabbitMQ
accepts from loopback only (``loopback_users``; the node listens on 127.0.0.1 anyway). A node already running
gets the users through its management API instead (:func:`ensure_process_users`, at every ``start``).

Also makes and deletes vhosts through a management API (the local node's or a container's): the tests and the
bench take one each; a vhost whose processes log in as their own users gets them with
``ensure_process_users(url, [vhost])``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from common.messaging.topology import STAGE_QUEUES
from tools.infra import brokerusers, tls
from tools.infra.settings import (
    HOST,
    RABBIT_PASSWORD,
    RABBIT_USER,
    ROOT,
    InfraError,
    ServerSettings,
    ServerStatus,
    check_name,
    with_path,
)
from tools.infra.system import (
    apt_install,
    is_root,
    pid_alive,
    port_open,
    prepare_dir,
    print_progress,
    run,
    tail,
    user_exists,
    wait_until,
    write_owned,
)

DEFINITIONS_FILE = ROOT / "ops" / "rabbitmq-definitions.json"
# The node's definitions folder: every file in it is imported at boot, in name order (the vhost and the
# topology before the users and their permissions on it).
DEFINITIONS_FOLDER = "definitions"
TOPOLOGY_FILE = "10-topology.json"
USERS_FILE = "20-users.json"
# Env variables a process reads its broker login from (common/settings.py): `./oms up` and the sandboxes set them.
USER_VARIABLE = "OMS_AMQP_USER"
# B105: the name of a variable, not a password.
PASSWORD_FILE_VARIABLE = "OMS_AMQP_PASSWORD_FILE"  # nosec B105
DECLARE_VARIABLE = "OMS_AMQP_DECLARE_TOPOLOGY"


def _owner() -> str | None:
    return "rabbitmq" if is_root() else None


def _script(name: str) -> str:
    # As root, Debian's wrappers in /usr/sbin switch to the rabbitmq user, whose home holds the Erlang
    # cookie, so the server and the CLI tools agree on it. Another user runs the real scripts directly
    # with their own cookie.
    if is_root():
        found = shutil.which(name) or f"/usr/sbin/{name}"
    else:
        direct = Path("/usr/lib/rabbitmq/bin") / name
        found = str(direct) if direct.exists() else (shutil.which(name) or name)
    return found


def _env(settings: ServerSettings) -> dict[str, str]:
    base = settings.rabbit_dir
    # The plaintext listener: these two variables would open it whatever the config file says, so with TLS on
    # the listeners are the config file's alone (_config).
    listener = {} if settings.tls else {"RABBITMQ_NODE_IP_ADDRESS": HOST, "RABBITMQ_NODE_PORT": str(settings.amqp_port)}
    environment = {
        key: value for key, value in os.environ.items() if key not in ("RABBITMQ_NODE_IP_ADDRESS", "RABBITMQ_NODE_PORT")
    }
    count = settings.rabbit_schedulers
    schedulers = f" +S {count}:{count}" if count else ""  # all of them online; none given: one per core
    return {
        **environment,
        "RABBITMQ_NODENAME": settings.nodename,
        **listener,
        "RABBITMQ_DIST_PORT": str(settings.dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(settings.rabbit_pid_file),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        # 3.10 takes the new-style (sysctl) format when the path ends in .conf.
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        # Not the machine-wide /etc/rabbitmq/rabbitmq-env.conf: this node is private to the project.
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        # Keep Erlang distribution on loopback too; as many schedulers as the settings give.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel inet_dist_use_interface {{127,0,0,1}}{schedulers}",
        "ERL_EPMD_ADDRESS": HOST,
        "ERL_CRASH_DUMP": str(base / "log" / "erl_crash.dump"),
    }


def _tls_folder(settings: ServerSettings) -> Path:
    """The node's own copy of the certificate and key (tools/infra/tls.py), owned by its user."""
    return settings.rabbit_dir / "tls"


def _listeners(settings: ServerSettings) -> list[str]:
    if not settings.tls:
        return [f"management.tcp.ip = {HOST}", f"management.tcp.port = {settings.management_port}"]
    copy = tls.TlsFiles(_tls_folder(settings))
    files = [f"cacertfile = {copy.ca_cert}", f"certfile = {copy.server_cert}", f"keyfile = {copy.server_key}"]
    # AMQPS only: no plaintext listener at all, so a plaintext client finds nothing to speak AMQP to. The
    # clients need no certificate of their own (they log in with a password); the management API is HTTPS only.
    return [
        "listeners.tcp = none",
        f"listeners.ssl.local = {HOST}:{settings.amqp_port}",
        *(f"ssl_options.{line}" for line in files),
        "ssl_options.verify = verify_none",
        "ssl_options.fail_if_no_peer_cert = false",
        f"management.ssl.ip = {HOST}",
        f"management.ssl.port = {settings.management_port}",
        *(f"management.ssl.{line}" for line in files),
    ]


def _config(settings: ServerSettings) -> str:
    lines = [
        "# Written by tools/infra/rabbitmq.py at every start; change it there.",
        *_listeners(settings),
        # RabbitMQ's default, said out loud: guest (local development only) logs in from this machine alone.
        "loopback_users.guest = true",
        # The node's own copies (see _prepare): the checkout may sit where its user cannot read.
        f"load_definitions = {settings.rabbit_dir / DEFINITIONS_FOLDER}",
        *_cluster_config(settings),
    ]
    return "\n".join(lines) + "\n"


def _cluster_config(settings: ServerSettings) -> list[str]:
    """A node of a local cluster (tools/infra/rabbit_cluster.py): classic-config peer discovery (a blank node
    joins the first listed peer that answers) and quorum queue leaders placed on the node leading the fewest."""
    if not settings.rabbit_peers:
        return []
    peers = (f"cluster_formation.classic_config.nodes.{i} = {name}" for i, name in enumerate(settings.rabbit_peers, 1))
    return ["cluster_formation.peer_discovery_backend = classic_config", *peers, "queue_leader_locator = balanced"]


def _boot_topology(settings: ServerSettings) -> str:
    """The topology a node loads at boot: the definitions file; a cluster node's without its queues and their
    bindings, which rabbit_cluster.start imports once every node has joined: a quorum queue declared while the
    first node stood alone would have one member only."""
    text = DEFINITIONS_FILE.read_text()
    if not settings.rabbit_peers:
        return text
    document = {k: v for k, v in json.loads(text).items() if k not in ("queues", "bindings")}
    return json.dumps(document, indent=2) + "\n"


def secrets_dir(settings: ServerSettings | None = None) -> Path:
    """Where the broker users' passwords are kept: under the data folder of the servers ``settings`` describe
    (default: this environment's; never committed), where that instance's processes read them; with the servers
    in docker compose (``OMS_INFRA=docker``), ./secrets, whose users that broker has.

    A node is always given the passwords of its own instance: a test that restarts a node of its own (the fault
    suite's broker outage) from a process whose environment names another data folder must not reset the users'
    passwords to that other folder's, or every process of the instance is refused at its next login."""
    if os.environ.get("OMS_INFRA", "").lower() == "docker":
        return ROOT / "secrets"
    settings = settings or ServerSettings.from_env()
    return settings.secrets_dir or settings.data_dir / "secrets"


def _users_definitions(settings: ServerSettings) -> str:
    # guest is the local development profile's: docker-compose.yml's users (`./oms secrets init`) have none.
    guest = {
        "name": RABBIT_USER,
        "password_hash": brokerusers.password_hash(RABBIT_USER, RABBIT_PASSWORD),
        "tags": ["administrator"],
    }
    document = brokerusers.definitions(brokerusers.passwords(secrets_dir(settings)), extra_users=[guest])
    return json.dumps(document, indent=2) + "\n"


def _prepare(settings: ServerSettings) -> None:
    if not shutil.which("rabbitmq-server") and not Path("/usr/sbin/rabbitmq-server").exists():
        apt_install("rabbitmq-server", "RabbitMQ is not installed")
    owner = _owner()
    if owner and not user_exists(owner):
        raise InfraError("user 'rabbitmq' is missing; `apt-get install -y rabbitmq-server` creates it")
    base = settings.rabbit_dir
    for folder in (base, base / "mnesia", base / "log"):
        prepare_dir(folder, owner)
    write_owned(base / "enabled_plugins", "[rabbitmq_management,rabbitmq_consistent_hash_exchange].\n", owner)
    if settings.tls:
        _, renewed = tls.install(tls.files(settings.data_dir), _tls_folder(settings), owner)
        if renewed and pid_alive(settings.rabbit_pid_file, "beam") is not None:
            # A running node caches the files it read: forget them, so new connections get the renewed ones.
            ctl = [_script("rabbitmqctl"), "-n", settings.nodename, "eval", "ssl:clear_pem_cache()."]
            run(ctl, env=_env(settings), check=False, timeout=60)
    # Copied into the node's folder at every start: a checkout in a private folder (mktemp -d, mode 0700) is out
    # of the rabbitmq user's reach, and the node refuses to start without its definitions.
    definitions = base / DEFINITIONS_FOLDER
    prepare_dir(definitions, owner)
    definitions.chmod(0o700)  # the users' password hashes
    write_owned(definitions / TOPOLOGY_FILE, _boot_topology(settings), owner)
    write_owned(definitions / USERS_FILE, _users_definitions(settings), owner)
    (definitions / USERS_FILE).chmod(0o600)
    write_owned(base / "rabbitmq.conf", _config(settings), owner)


def _management_get(settings: ServerSettings, path: str, timeout: float = 2.0) -> Any:
    import requests

    url = settings.urls.management_url
    response = requests.get(
        url + path.lstrip("/"),
        auth=(RABBIT_USER, RABBIT_PASSWORD),
        timeout=timeout,
        verify=tls.verify_for(url, settings),
    )
    response.raise_for_status()
    return response.json()


def _node_answering(settings: ServerSettings) -> str | None:
    """The node name the management API on our port reports, or None when nothing answers there."""
    try:
        overview = _management_get(settings, "api/overview")
    except Exception:
        return None
    return str(overview.get("node"))


def _ready(settings: ServerSettings) -> bool:
    return port_open(settings.amqp_port) and _node_answering(settings) == settings.nodename


_children: list[subprocess.Popen[bytes]] = []  # keeps the server's parent from being reaped noisily


def start(settings: ServerSettings) -> str:
    """Start the local node unless it runs or boots already; wait until its management API names it; make sure
    it has the users of the processes (a node that booted before they existed gets them now)."""
    state = _start(settings)
    url = settings.urls.management_url
    ensure_process_users(url, folder=secrets_dir(settings), verify=tls.verify_for(url, settings))
    return state


def _mode_mismatch(settings: ServerSettings) -> str | None:
    """Why the node on our AMQP port cannot be this start's: it speaks TLS and none was asked, or the reverse."""
    if not port_open(settings.amqp_port) or tls.speaks_tls(settings.amqp_port) == settings.tls:
        return None
    return (
        f"the node on port {settings.amqp_port} runs {'without' if settings.tls else 'with'} TLS, and this start "
        f"asks for it {'on' if settings.tls else 'off'}: `./oms infra stop` first (TLS is set when a node starts)"
    )


def _start(settings: ServerSettings) -> str:
    if pid_alive(settings.rabbit_pid_file, "beam") and (problem := _mode_mismatch(settings)):
        raise InfraError(f"rabbitmq: {problem}")
    _prepare(settings)
    started = time.monotonic()
    deadline = started + settings.timeout
    if _ready(settings):
        return "already running"
    if pid_alive(settings.rabbit_pid_file, "beam"):
        # Booting (started by another process): wait for it rather than start a second node.
        wait_until(
            lambda: _ready(settings),
            what="rabbitmq",
            deadline=deadline,
            log=settings.rabbit_log,
            failed=lambda: _mode_mismatch(settings),
        )
        return "already running"
    for port, name in (
        (settings.amqp_port, "OMS_AMQP_PORT"),
        (settings.management_port, "OMS_RABBITMQ_MGMT_PORT"),
        (settings.dist_port, "OMS_RABBITMQ_DIST_PORT"),
    ):
        if port_open(port):
            raise InfraError(f"rabbitmq: port {port} is taken by another program; set {name} to a free port")
    stdout = settings.rabbit_stdout
    with open(stdout, "wb") as out:
        # In the foreground of a child of our own (not -detached) so that an early exit is seen at once
        # instead of at the deadline; its own session keeps it alive after we exit and away from Ctrl-C.
        # B603: the packaged rabbitmq-server script (_script), no arguments, no shell.
        process = subprocess.Popen(  # nosec B603
            [_script("rabbitmq-server")],
            env=_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    _children.append(process)

    def failed() -> str | None:
        code = process.poll()
        if code is None:
            return None
        return f"the server exited (code {code}); its output, {stdout}:\n{tail(stdout)}"

    wait_until(
        lambda: _ready(settings),
        what="rabbitmq",
        deadline=deadline,
        log=settings.rabbit_log,
        failed=failed,
    )
    return f"started in {time.monotonic() - started:.1f}s"


def stop(settings: ServerSettings) -> str:
    """Stop the local node if it runs: rabbitmqctl, else SIGTERM."""
    pid = pid_alive(settings.rabbit_pid_file, "beam")
    if pid is None:
        return "not running"
    # `stop <pid file>` returns only once the node's OS process is gone.
    ctl = [_script("rabbitmqctl"), "-n", settings.nodename, "stop", str(settings.rabbit_pid_file)]
    result = run(ctl, env=_env(settings), check=False, timeout=settings.timeout)
    if result.returncode == 0 and pid_alive(settings.rabbit_pid_file, "beam") is None:
        return "stopped"
    # The CLI could not reach the node (a cookie mix-up, say): RabbitMQ shuts down cleanly on SIGTERM too.
    print_progress(f"infra: rabbitmqctl stop failed ({(result.stdout + result.stderr).strip()[:300]}); sending SIGTERM")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.timeout
    while pid_alive(settings.rabbit_pid_file, "beam") is not None:
        if time.monotonic() >= deadline:
            raise InfraError(f"rabbitmq (pid {pid}) did not stop; log: {settings.rabbit_log}")
        time.sleep(0.2)
    return "stopped (SIGTERM)"


def status(settings: ServerSettings) -> ServerStatus:
    """The local node's state, telling our node from another answering on our management port."""
    pid = pid_alive(settings.rabbit_pid_file, "beam")
    node = _node_answering(settings)
    if node == settings.nodename:
        state = f"running (node {node}, pid {pid})"
    elif pid is not None:
        state = f"process {pid} alive, management API not answering"
    elif node is not None:
        state = f"stopped; another node ({node}) answers on port {settings.management_port}"
    else:
        state = "stopped"
    return ServerStatus(
        "rabbitmq",
        node == settings.nodename,
        f"{state}; data {settings.rabbit_dir}; log {settings.rabbit_log}",
    )


def _management(management_url: str | None) -> tuple[str, tuple[str, str]]:
    parts = urlsplit(management_url or ServerSettings.from_env().urls.management_url)
    auth = (parts.username or RABBIT_USER, parts.password or RABBIT_PASSWORD)
    netloc = parts.hostname or HOST
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/", "", ""))
    return base, auth


def create_vhost(name: str, management_url: str | None = None) -> None:
    """Create vhost ``name`` and give the management user (guest) full permissions on it."""
    import requests

    check_name(name)
    base, auth = _management(management_url)
    vhost = quote(name, safe="")
    response = requests.put(f"{base}api/vhosts/{vhost}", auth=auth, timeout=10, verify=tls.verify_for(base))
    response.raise_for_status()
    response = requests.put(
        f"{base}api/permissions/{vhost}/{quote(auth[0], safe='')}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=auth,
        timeout=10,
        verify=tls.verify_for(base),
    )
    response.raise_for_status()


def delete_vhost(name: str, management_url: str | None = None) -> None:
    """Delete vhost ``name`` (absent is fine)."""
    import requests

    check_name(name)
    base, auth = _management(management_url)
    response = requests.delete(
        f"{base}api/vhosts/{quote(name, safe='')}", auth=auth, timeout=30, verify=tls.verify_for(base)
    )
    if response.status_code != 404:
        response.raise_for_status()


def amqp_url_for_vhost(amqp_url: str, vhost: str) -> str:
    """``amqp_url`` pointed at ``vhost``."""
    return with_path(amqp_url, "/" + quote(vhost, safe=""))


# ------------------------------------------------------------------------------------------- process users


def process_env(process: str, folder: Path | None = None) -> dict[str, str]:
    """The variables that make ``process`` (a name of tools/processes.py) log in as its kind's broker user, with
    the password file under ``folder`` (default: the local data folder's secrets), and leave the topology to the
    broker's definitions (that user may not declare it: see :func:`load_topology`); none for a process that has
    no user of its own."""
    user = brokerusers.BY_PROCESS.get(process)
    if user is None:
        return {}
    where = folder or secrets_dir()
    return {
        USER_VARIABLE: user.name,
        PASSWORD_FILE_VARIABLE: str(where / brokerusers.password_file_name(user)),
        DECLARE_VARIABLE: "false",
    }


def load_topology(management_url: str | None = None, vhost: str = "/") -> None:
    """Import the topology of ops/rabbitmq-definitions.json (exchanges, queues, bindings, policies) into
    ``vhost``, as the broker does at boot: what processes that do not declare it need first (idempotent)."""
    import requests

    base, auth = _management(management_url)
    document = json.loads(DEFINITIONS_FILE.read_text())
    scoped = {key: document[key] for key in ("exchanges", "queues", "bindings", "policies")}
    response = requests.post(
        f"{base}api/definitions/{quote(vhost, safe='')}",
        json=scoped,
        auth=auth,
        timeout=60,
        verify=tls.verify_for(base),
    )
    response.raise_for_status()
    # An import only adds: a binding an unpartitioned version made (a public key straight to a stage's first
    # queue) would copy every message the consistent-hash exchange routes too, so it goes.
    for queue in STAGE_QUEUES.values():
        for source, key in queue.obsolete_bindings():
            vhost_, source_, queue_, key_ = (quote(part, safe="") for part in (vhost, source, queue.name, key))
            gone = requests.delete(
                f"{base}api/bindings/{vhost_}/e/{source_}/q/{queue_}/{key_}",
                auth=auth,
                timeout=30,
                verify=tls.verify_for(base),
            )
            if gone.status_code != 404:
                gone.raise_for_status()


def ensure_process_users(
    management_url: str | None = None,
    vhosts: Iterable[str] = ("/",),
    folder: Path | None = None,
    verify: str | bool | None = None,
) -> None:
    """Make every broker user exist, with its password from ``folder`` (created there when missing), its tags,
    and its permissions and topic permissions on each of ``vhosts``, through a management API (the local node's
    by default, whose URL may carry an administrator's login). Only what differs is changed. ``verify``: the CA
    of an https management API (default: this environment's instance's, ``tls.verify_for``)."""
    import requests

    base, auth = _management(management_url)
    secrets = brokerusers.passwords(folder or secrets_dir())
    session = requests.Session()
    session.auth = auth
    # Per request: a session's own `verify` loses to REQUESTS_CA_BUNDLE in the environment.
    trusted = tls.verify_for(base) if verify is None else verify

    def call(method: str, path: str, body: Any = None) -> Any:
        response = session.request(method, base + path, json=body, timeout=30, verify=trusted)
        response.raise_for_status()
        return response.json() if method == "GET" else None

    users = {u["name"]: u for u in call("GET", "api/users")}
    for user in brokerusers.BROKER_USERS:
        have = users.get(user.name)
        tags = have.get("tags", []) if have else []
        tags = tags.split(",") if isinstance(tags, str) else tags
        current = (
            have is not None
            and have.get("hashing_algorithm") == brokerusers.HASHING_ALGORITHM
            and brokerusers.password_matches(str(have.get("password_hash", "")), secrets[user.name])
            and sorted(t for t in tags if t) == sorted(user.tags)
        )
        if not current:
            call(
                "PUT",
                f"api/users/{quote(user.name, safe='')}",
                {"password": secrets[user.name], "tags": ",".join(user.tags)},
            )
    permissions = {(p["user"], p["vhost"]): p for p in call("GET", "api/permissions")}
    topics: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
    for p in call("GET", "api/topic-permissions"):
        topics.setdefault((p["user"], p["vhost"]), {})[p["exchange"]] = (p["write"], p["read"])
    for vhost in vhosts:
        where = quote(vhost, safe="")
        for user in brokerusers.BROKER_USERS:
            name = quote(user.name, safe="")
            wanted = user.permissions()
            have_permissions = permissions.get((user.name, vhost), {})
            if any(have_permissions.get(key) != value for key, value in wanted.items()):
                call("PUT", f"api/permissions/{where}/{name}", wanted)
            wanted_topics = {x: (w, brokerusers.EVERYTHING) for x, w in user.topic_permissions().items()}
            if topics.get((user.name, vhost), {}) != wanted_topics:
                if (user.name, vhost) in topics:
                    call("DELETE", f"api/topic-permissions/{where}/{name}")
                for exchange, (write, read) in wanted_topics.items():
                    call(
                        "PUT",
                        f"api/topic-permissions/{where}/{name}",
                        {"exchange": exchange, "write": write, "read": read},
                    )
