"""Tenant networks through the HTTP API on a real Docker engine: more tenants than dockerd's default
address pools hold, unused networks collected by the reconciler, an exhausted subnet pool refused
with a 503 before anything is written. Every object a test makes is removed afterwards (by its
cluster label)."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import uuid
from collections.abc import Iterator

import anyio.to_thread
import msgspec
import pytest
from ctrlplane_docker import DockerProvider
from ctrlplane_docker.settings import DockerSettings
from docker import DockerClient

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.test_instances import create, state, wait_for
from tests.api.test_instances_docker import APP, tenant
from tests.conftest import Api
from tests.providers.docker_engine import docker_engine, remove_cluster

pytestmark = pytest.mark.docker

__all__ = ["docker_engine"]

TENANTS = 60
"""More tenants than Docker's default address pools hold networks (about 30)."""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, providers=("docker",), workers=4)


@pytest.fixture
def docker_settings(request: pytest.FixtureRequest) -> DockerSettings:
    pool, size = getattr(request, "param", (DockerSettings().subnet_pool, DockerSettings().subnet_size))
    return DockerSettings(subnet_pool=pool, subnet_size=size)


@pytest.fixture
def providers(settings: Settings, docker_settings: DockerSettings, docker_engine: DockerClient) -> ProviderRegistry:
    return ProviderRegistry([DockerProvider(provider_settings(settings), docker=docker_settings, stop_timeout=1)])


@pytest.fixture(autouse=True)
def _remove_what_the_test_made(settings: Settings, docker_engine: DockerClient) -> Iterator[None]:
    yield
    remove_cluster(docker_engine, settings.cluster_name)


def networks_of(engine: DockerClient, cluster: str) -> list[str]:
    return sorted(n.name for n in engine.networks.list(filters={"label": f"ctrlplane.cluster={cluster}"}))


# Slow by design: sixty real containers and tenant networks on one engine is the scale it claims.
async def test_sixty_tenants_each_run_an_instance_on_one_engine(
    live: Api, settings: Settings, docker_settings: DockerSettings, docker_engine: DockerClient
) -> None:
    tokens = [await tenant(live, f"t{n:02d}") for n in range(TENANTS)]
    created = [await create(live, token, name="web", **APP) for token in tokens]
    # Waited for one after the other: they all start at once anyway, and no request races another.
    running = [
        await wait_for(live, c["id"], token, state("running"), timeout=240)
        for c, token in zip(created, tokens, strict=True)
    ]
    assert len({r["tenant_id"] for r in running}) == TENANTS
    networks = await anyio.to_thread.run_sync(
        lambda: docker_engine.api.networks(filters={"label": f"ctrlplane.cluster={settings.cluster_name}"})
    )
    assert len(networks) == TENANTS
    pool = ipaddress.IPv4Network(docker_settings.subnet_pool)
    subnets = [ipaddress.IPv4Network(n["IPAM"]["Config"][0]["Subnet"]) for n in networks]
    assert all(s.subnet_of(pool) for s in subnets)
    assert len(set(subnets)) == TENANTS
    for c, token in zip(created, tokens, strict=True):
        assert (await live.client.delete(f"/v1/instances/{c['id']}", headers=token)).status_code == 202
    for c, token in zip(created, tokens, strict=True):
        await wait_for(live, c["id"], token, state("destroyed"), timeout=120)
    assert await anyio.to_thread.run_sync(networks_of, docker_engine, settings.cluster_name) == []


async def test_the_reconciler_removes_this_installations_leaked_network_and_not_anothers(
    live: Api, settings: Settings, docker_engine: DockerClient
) -> None:
    other_cluster = f"test-other-{uuid.uuid4().hex[:8]}"

    def leak(cluster: str) -> str:
        tenant_id = f"ten_{uuid.uuid4().hex[:12]}"
        name = f"cp-tenant-{tenant_id}"
        labels = {
            "ctrlplane.managed": "true",
            "ctrlplane.cluster": cluster,
            "ctrlplane.tenant": tenant_id,
            "ctrlplane.purpose": "network",
        }
        docker_engine.api.create_network(name, driver="bridge", labels=labels)
        return name

    mine = await anyio.to_thread.run_sync(leak, settings.cluster_name)
    theirs = await anyio.to_thread.run_sync(leak, other_cluster)
    try:
        for _ in range(200):
            if not await anyio.to_thread.run_sync(networks_of, docker_engine, settings.cluster_name):
                break
            await asyncio.sleep(0.05)
        assert mine not in await anyio.to_thread.run_sync(networks_of, docker_engine, settings.cluster_name)
        assert await anyio.to_thread.run_sync(networks_of, docker_engine, other_cluster) == [theirs]
    finally:
        remove_cluster(docker_engine, other_cluster)


@pytest.mark.parametrize("docker_settings", [(f"10.251.{random.randrange(256)}.0/29", 29)], indirect=True)
async def test_an_exhausted_subnet_pool_refuses_a_new_tenants_instance_with_503(
    live: Api, docker_engine: DockerClient
) -> None:
    first, second = await tenant(live, "first"), await tenant(live, "second")
    instance = await create(live, first, name="web", **APP)
    await wait_for(live, instance["id"], first, state("running"), timeout=60)
    refused = await live.client.post("/v1/instances", json={"name": "web", **APP}, headers=second)
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["code"] == "subnet_pool_exhausted"
    assert "CTRLPLANE_DOCKER_SUBNET_POOL" in body["message"]
    assert body["request_id"]
    assert (await live.client.get("/v1/instances", headers=second)).json()["items"] == []
    again = await live.client.post("/v1/instances", json={"name": "web2", **APP}, headers=first)
    assert again.status_code == 201, "a tenant that has its network needs no new block"
    for _ in range(100):  # provider health is refreshed every few seconds
        providers = await live.client.get("/v1/admin/providers", headers=live.admin_headers)
        [docker] = providers.json()["items"]
        if "exhausted" in docker["message"]:
            break
        await asyncio.sleep(0.1)
    assert "subnet pool" in docker["message"] and "exhausted" in docker["message"]
