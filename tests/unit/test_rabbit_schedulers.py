"""The local RabbitMQ node's scheduler count: from OMS_RABBITMQ_SCHEDULERS, else half the cores, into its +S."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.infra import rabbitmq
from tools.infra.settings import InfraError, ServerSettings, default_rabbit_schedulers


def test_half_the_cores_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, expected in ((None, 1), (1, 1), (2, 1), (3, 1), (8, 4)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert default_rabbit_schedulers() == expected


def test_the_variable_sets_the_nodes_schedulers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("OMS_RABBITMQ_SCHEDULERS", raising=False)
    assert ServerSettings.from_env().rabbit_schedulers == default_rabbit_schedulers()
    monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", "3")
    settings = ServerSettings.from_env()
    assert settings.rabbit_schedulers == 3
    arguments = rabbitmq._env(settings)["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()
    assert arguments[arguments.index("+S") + 1] == "3:3"
    assert "inet_dist_use_interface" in arguments  # distribution stays on loopback
    monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", "0")
    assert ServerSettings.from_env().rabbit_schedulers == 1  # a node needs one
    monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", "two")
    with pytest.raises(InfraError, match="OMS_RABBITMQ_SCHEDULERS"):
        ServerSettings.from_env()
