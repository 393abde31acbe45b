"""Tenant networks on a real Docker engine: subnets from ctrlplane's pool, shared engines, unused
networks collected, an exhausted pool refused up front. Each test has its own cluster name and a
small pool of its own (in 10.250.0.0/16, outside the default pool and dockerd's pools), and removes
every object it made."""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.to_thread
import pytest
from ctrlplane_docker import DockerProvider
from ctrlplane_docker import provider as docker_provider
from ctrlplane_docker.settings import DockerSettings
from ctrlplane_docker.subnets import SubnetPoolExhausted
from docker import DockerClient

from ctrlplane.provisioning.contract import (
    AdmittingProvider,
    CollectingProvider,
    PortSpec,
    ProviderSettings,
    Resources,
    WorkloadSpec,
)
from tests.providers.docker_engine import HTTP_PORT, IMAGE, docker_engine, remove_cluster

pytestmark = pytest.mark.docker

__all__ = ["docker_engine"]


def pool_for_test(prefix: int) -> str:
    """A pool of its own per test (another run of this file may be running on the engine)."""
    third = random.randrange(256)
    return str(ipaddress.IPv4Network((f"10.250.{third}.0", prefix)))


@pytest.fixture
def cluster(docker_engine: DockerClient) -> Iterator[str]:
    name = f"test-networks-{uuid.uuid4().hex[:8]}"
    yield name
    remove_cluster(docker_engine, name)


def make_provider(cluster: str, pool: str, size: int) -> DockerProvider:
    docker = DockerSettings(subnet_pool=pool, subnet_size=size)
    return DockerProvider(ProviderSettings(cluster_name=cluster), docker=docker, stop_timeout=1)


@pytest.fixture
async def provider(cluster: str) -> AsyncIterator[DockerProvider]:
    provider = make_provider(cluster, pool_for_test(29), 30)  # two /30 blocks: two tenants
    yield provider
    await provider.close()


def spec(tenant_id: str) -> WorkloadSpec:
    return WorkloadSpec(
        instance_id=f"inst_{uuid.uuid4().hex[:12]}",
        tenant_id=tenant_id,
        name="net",
        image=IMAGE,
        resources=Resources(cpu_millis=100, memory_mb=16),
        ports=(PortSpec(HTTP_PORT),),
    )


def tenant() -> str:
    return f"ten_{uuid.uuid4().hex[:12]}"


async def network(engine: DockerClient, tenant_id: str) -> dict[str, Any] | None:
    found = await anyio.to_thread.run_sync(lambda: engine.api.networks(names=[f"cp-tenant-{tenant_id}"]))
    return dict(found[0]) if found else None


def subnet_of(network: dict[str, Any]) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(network["IPAM"]["Config"][0]["Subnet"])


async def test_a_tenant_network_takes_a_block_of_the_pool(
    provider: DockerProvider, docker_engine: DockerClient
) -> None:
    tenant_id = tenant()
    status = await provider.provision(spec(tenant_id))
    assert status.state == "running"
    found = await network(docker_engine, tenant_id)
    assert found is not None
    assert subnet_of(found).subnet_of(provider._subnets.network)
    assert subnet_of(found).prefixlen == 30


async def test_a_full_pool_refuses_a_new_tenant_up_front_and_admins_see_why(
    provider: DockerProvider, docker_engine: DockerClient
) -> None:
    assert isinstance(provider, AdmittingProvider)
    first, second, third = tenant(), tenant(), tenant()
    for tenant_id in (first, second):
        await provider.admit(tenant_id)
        await provider.provision(spec(tenant_id))
    await provider.admit(first)  # a tenant that has its network needs no new block
    with pytest.raises(SubnetPoolExhausted) as refused:
        await provider.admit(third)
    assert refused.value.status == 503
    assert refused.value.code == "subnet_pool_exhausted"
    with pytest.raises(SubnetPoolExhausted):
        await provider.provision(spec(third))
    assert await network(docker_engine, third) is None
    health = await provider.ping()
    assert health.available
    assert "exhausted" in health.message


async def test_a_block_another_installation_took_is_skipped(
    cluster: str, docker_engine: DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another installation on the engine creates a network in the block this one chose, between
    this one's listing of the engine's networks and its create: the create is refused as
    overlapping and the next free block is used."""
    provider = make_provider(cluster, pool_for_test(29), 30)
    tenant_id = tenant()
    first_choice = next(provider._subnets.free([], start_key=tenant_id))
    foreign = await anyio.to_thread.run_sync(
        lambda: docker_engine.networks.create(
            f"test-foreign-{uuid.uuid4().hex[:8]}",
            ipam={"Config": [{"Subnet": str(first_choice)}]},
            labels={"ctrlplane.cluster": cluster},
        )
    )
    monkeypatch.setattr(docker_provider, "network_subnets", lambda networks: [])  # the stale listing
    try:
        await provider.provision(spec(tenant_id))
        found = await network(docker_engine, tenant_id)
        assert found is not None
        assert subnet_of(found) != first_choice
        assert subnet_of(found).subnet_of(provider._subnets.network)
    finally:
        await anyio.to_thread.run_sync(foreign.remove)
        await provider.close()


async def test_unused_networks_of_this_installation_are_collected_and_others_kept(
    provider: DockerProvider, cluster: str, docker_engine: DockerClient
) -> None:
    assert isinstance(provider, CollectingProvider)
    other_cluster = f"test-networks-{uuid.uuid4().hex[:8]}"
    used, leaked, foreign = tenant(), tenant(), tenant()
    await provider.provision(spec(used))

    def create(tenant_id: str, cluster_name: str) -> None:
        docker_engine.api.create_network(
            f"cp-tenant-{tenant_id}",
            driver="bridge",
            labels={
                "ctrlplane.managed": "true",
                "ctrlplane.cluster": cluster_name,
                "ctrlplane.tenant": tenant_id,
                "ctrlplane.purpose": "network",
            },
        )

    await anyio.to_thread.run_sync(create, leaked, cluster)
    await anyio.to_thread.run_sync(create, foreign, other_cluster)
    try:
        removed = await provider.collect_unused()
        assert removed == [f"cp-tenant-{leaked}"]
        assert await network(docker_engine, leaked) is None
        assert await network(docker_engine, used) is not None
        assert await network(docker_engine, foreign) is not None
    finally:
        remove_cluster(docker_engine, other_cluster)
