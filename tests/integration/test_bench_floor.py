"""``oms bench --floor`` against the real servers: every operation of every step done and timed, and nothing
left behind on the servers."""

from __future__ import annotations

import pytest

from tests.support.servers import databases_named, vhosts_named
from tools import bench_floor
from tools.infra import InfraUrls

pytestmark = pytest.mark.integration


def test_the_floor_does_every_operation_and_drops_its_database_and_vhost(infra_urls: InfraUrls) -> None:
    if not infra_urls.management_url:
        pytest.skip("no management API to make the floor's vhost with")
    vhosts = vhosts_named(infra_urls.management_url, "oms_floor_")
    databases = databases_named(infra_urls.database_url, "oms_floor_")

    result = bench_floor.run_floor(infra_urls, rate=40, seconds=0.5, idle_seconds=0.1)

    assert result["operations"] == {step: 20 for step in bench_floor.STEPS}
    for step in bench_floor.STEPS:
        assert result["latency_ms"][step]["count"] == 20
        assert result["latency_ms"][step]["p50"] > 0
        assert set(result["steps"][step]) >= {"client"}
        assert all(value >= 0 for value in result["steps"][step].values())
    assert result["order_floor_ms"]["total"] > 0
    assert result["saturating_rate"] > 0
    assert vhosts_named(infra_urls.management_url, "oms_floor_") == vhosts
    assert databases_named(infra_urls.database_url, "oms_floor_") == databases
