"""Both servers together: start, stop and report on Postgres and RabbitMQ, as local processes or with Docker."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
from collections.abc import Iterator

from tools.infra import postgres, rabbit_cluster, tls
from tools.infra.docker import compose, use_docker
from tools.infra.settings import InfraError, InfraUrls, ServerSettings, ServerStatus
from tools.infra.system import is_root, pid_alive, print_progress


@contextlib.contextmanager
def _lock(settings: ServerSettings) -> Iterator[None]:
    """Serialise start/stop between processes (parallel test runs, two terminals)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if is_root():
        # The service users only need to traverse the data folder, never to write to it.
        settings.data_dir.chmod(0o755)
    with open(settings.data_dir / ".infra.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tls_mode(settings: ServerSettings, wanted: bool | None) -> ServerSettings:
    """The settings with the TLS mode this start runs: ``wanted``, else the one remembered. A change of mode is
    recorded, and refused while a server runs (TLS is set when a server starts: stop them first)."""
    if wanted is None or wanted == settings.tls:
        return settings
    up = [
        name
        for name, alive in (
            ("postgres", postgres.running(settings)),
            ("rabbitmq", pid_alive(settings.rabbit_pid_file, "beam") is not None),
        )
        if alive
    ]
    if up:
        raise InfraError(
            f"{' and '.join(up)} of {settings.data_dir} run with TLS {'off' if wanted else 'on'}; "
            f"`./oms infra stop`, then start again with {'--tls' if wanted else '--no-tls'}"
        )
    tls.remember(settings.data_dir, wanted)
    return dataclasses.replace(settings, tls=wanted)


def ensure_started(
    *, docker: bool | None = None, verbose: bool = False, tls_on: bool | None = None, rabbit_nodes: int | None = None
) -> InfraUrls:
    """Start Postgres and RabbitMQ unless they already run; return where they answer.

    ``tls_on``: True, TLS only on every connection (tools/infra/tls.py); False, none; None, as the instance
    was last started (remembered in its data folder). ``rabbit_nodes``: RabbitMQ as a cluster of that many nodes
    (tools/infra/rabbit_cluster.py), 1 a single node; None, as the instance was last started (default one)."""
    settings = ServerSettings.from_env()
    if use_docker(docker):
        if tls_on:
            raise InfraError("--tls runs with the local servers only, not with docker compose")
        from tools import secrets  # the compose file reads its secrets from files: made first, once

        secrets.init()
        compose("up", "-d", "--wait", "postgres", "rabbitmq")
        return secrets.compose_urls(settings)
    with _lock(settings):
        settings = _tls_mode(settings, tls_on)
        made = tls.ensure_certificates(settings.data_dir) if settings.tls else []
        pg = postgres.start(settings)
        rabbit, urls = rabbit_cluster.ensure_broker(settings, rabbit_nodes)
    if verbose:
        for line in made:
            print_progress(f"tls: {line}")
        print_progress(f"postgres: {pg} (port {settings.pg_port}; log {settings.pg_log})")
        where = "" if urls.amqp_nodes else f" (node {settings.nodename}; log {settings.rabbit_log})"
        print_progress(f"rabbitmq: {rabbit}{where}")
        if settings.tls:
            print_progress(
                f"tls: on, plaintext refused (CA {tls.files(settings.data_dir).ca_cert}; --no-tls turns it off)"
            )
    return urls


def stop(*, docker: bool | None = None) -> list[str]:
    """Stop both servers (a server that is not running is fine); returns what was done."""
    settings = ServerSettings.from_env()
    if use_docker(docker):
        compose("stop", "postgres", "rabbitmq")
        return ["docker compose: postgres and rabbitmq stopped"]
    with _lock(settings):
        # Both are attempted even when the first fails, so a broken Postgres does not leave RabbitMQ running.
        errors: list[str] = []
        done: list[str] = []
        for name, action in (("rabbitmq", rabbit_cluster.stop), ("postgres", postgres.stop)):
            try:
                done.append(f"{name}: {action(settings)}")
            except InfraError as exc:
                errors.append(f"{name}: {exc}")
    if errors:
        raise InfraError("\n".join(errors))
    return done


def status(*, docker: bool | None = None) -> list[ServerStatus]:
    """Each server's state."""
    settings = ServerSettings.from_env()
    if use_docker(docker):
        out = compose("ps", "postgres", "rabbitmq").stdout.strip()
        return [ServerStatus("docker compose", "running" in out.lower() or "up" in out.lower(), out)]
    return [postgres.status(settings), *rabbit_cluster.broker_status(settings)]
