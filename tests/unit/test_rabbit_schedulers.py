"""The local RabbitMQ node's scheduler count: OMS_RABBITMQ_SCHEDULERS into its +S; unset, half the cores; 0,
Erlang's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.infra import rabbitmq
from tools.infra.settings import InfraError, ServerSettings, default_rabbit_schedulers, usable_cores


def _arguments(settings: ServerSettings) -> list[str]:
    return rabbitmq._env(settings)["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()


def test_half_the_cores_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, expected in ((1, 1), (2, 1), (3, 1), (8, 4)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, cores=cores: set(range(cores)))
        assert default_rabbit_schedulers() == expected


def test_the_cores_are_those_the_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 64)  # the host's, not this process's
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert usable_cores() == 2
    monkeypatch.delattr("os.sched_getaffinity")  # a platform without affinity: every core
    assert usable_cores() == 64
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert usable_cores() == 1


def test_unset_gives_half_the_cores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("OMS_RABBITMQ_SCHEDULERS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    settings = ServerSettings.from_env()
    assert settings.rabbit_schedulers == 2
    arguments = _arguments(settings)
    assert arguments[arguments.index("+S") + 1] == "2:2"


def test_the_variable_sets_the_nodes_schedulers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", "3")
    settings = ServerSettings.from_env()
    assert settings.rabbit_schedulers == 3
    arguments = _arguments(settings)
    assert arguments[arguments.index("+S") + 1] == "3:3"
    assert "inet_dist_use_interface" in arguments  # distribution stays on loopback


def test_zero_leaves_erlangs_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", "0")
    settings = ServerSettings.from_env()
    assert settings.rabbit_schedulers == 0
    arguments = _arguments(settings)
    assert "+S" not in arguments
    assert "inet_dist_use_interface" in arguments


def test_a_count_that_is_not_a_number_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", "two")
    with pytest.raises(InfraError, match="OMS_RABBITMQ_SCHEDULERS"):
        ServerSettings.from_env()
