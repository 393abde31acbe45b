"""The reconciler on a real Docker engine: the engine's event stream triggers a repair at once,
the periodic pass being only the safety net. Every object a test makes is removed afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio.to_thread
import msgspec
import pytest
from ctrlplane_docker import DockerProvider
from docker import DockerClient

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.test_instances import create, state, wait_for
from tests.api.test_instances_docker import APP, answer, containers_of, tenant
from tests.conftest import Api
from tests.providers.docker_engine import docker_engine, remove_cluster

pytestmark = pytest.mark.docker

__all__ = ["docker_engine"]

PERIODIC_PASS_SECONDS = 600.0
"""Far beyond the test: only the first pass (at startup) runs; a repair must come from an event."""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, providers=("docker",), reconcile_interval_seconds=PERIODIC_PASS_SECONDS)


@pytest.fixture
def providers(settings: Settings, docker_engine: DockerClient) -> ProviderRegistry:
    return ProviderRegistry([DockerProvider(provider_settings(settings), stop_timeout=1)])


@pytest.fixture(autouse=True)
def _remove_what_the_test_made(settings: Settings, docker_engine: DockerClient) -> Iterator[None]:
    yield
    remove_cluster(docker_engine, settings.cluster_name)


async def test_a_container_killed_from_outside_is_restarted_without_waiting_for_the_periodic_pass(
    live: Api, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    instance = await create(live, token, name="web", restart_policy="always", **APP)
    before = await wait_for(live, instance["id"], token, state("running"), timeout=60)
    [container] = containers_of(docker_engine, instance["id"])
    killed = time.monotonic()
    await anyio.to_thread.run_sync(lambda: container.kill(signal="SIGKILL"))
    await wait_for(
        live, instance["id"], token, lambda body: body["restart_count"] >= 1 and body["state"] == "running", timeout=20
    )
    assert time.monotonic() - killed < 20 < PERIODIC_PASS_SECONDS
    events = (await live.client.get(f"/v1/instances/{instance['id']}/events", headers=token)).json()["items"]
    restarted = [e for e in events if e["type"] == "instance.restarted"]
    assert restarted and restarted[0]["data"]["exit_code"] == 137
    for _ in range(200):
        [again] = await anyio.to_thread.run_sync(containers_of, docker_engine, instance["id"])
        if again.status == "running":
            break
        await anyio.sleep(0.05)
    assert again.status == "running"
    assert time.monotonic() - killed < 20
    running = await wait_for(
        live, instance["id"], token, lambda body: body["endpoints"] not in ([], before["endpoints"]), timeout=20
    )
    assert (await answer(running["endpoints"][0]["url"] + "/")).status_code == 200
