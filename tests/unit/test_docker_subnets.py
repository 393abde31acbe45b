"""The Docker provider's subnet pool: which blocks are free given the engine's networks."""

from __future__ import annotations

import ipaddress

import pytest
from ctrlplane_docker.settings import DockerSettings
from ctrlplane_docker.subnets import SubnetPool, network_subnets

from ctrlplane.provisioning.errors import ProviderLoadError


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_the_default_pool_holds_4096_tenant_networks_clear_of_dockers_own_pools() -> None:
    settings = DockerSettings()
    pool = SubnetPool(settings.subnet_pool, settings.subnet_size)
    assert pool.count == 4096
    docker_defaults = [net(f"172.{n}.0.0/16") for n in range(17, 32)] + [net("192.168.0.0/16")]
    assert not any(pool.network.overlaps(default) for default in docker_defaults)


def test_blocks_overlapped_by_any_network_are_taken() -> None:
    pool = SubnetPool("10.0.0.0/22", 24)
    taken = pool.taken([net("10.0.1.0/24"), net("10.0.2.128/25"), net("172.17.0.0/16")])
    assert taken == {1, 2}
    wider = pool.taken([net("10.0.0.0/16")])
    assert wider == {0, 1, 2, 3}


def test_free_blocks_skip_the_taken_ones_and_wrap_around() -> None:
    pool = SubnetPool("10.0.0.0/22", 24)
    free = list(pool.free([net("10.0.1.0/24")], start_key="tenant-a"))
    assert sorted(free) == [net("10.0.0.0/24"), net("10.0.2.0/24"), net("10.0.3.0/24")]
    assert len(set(free)) == 3


def test_tenants_start_their_search_at_different_blocks() -> None:
    pool = SubnetPool("10.224.0.0/12", 24)
    starts = {next(pool.free([], start_key=f"ten_{n}")) for n in range(50)}
    assert len(starts) > 40, "concurrent creators would keep colliding on the same first block"


def test_a_full_pool_has_no_free_block() -> None:
    pool = SubnetPool("10.0.0.0/23", 24)
    assert list(pool.free([net("10.0.0.0/24"), net("10.0.1.0/24")], start_key="t")) == []


def test_network_subnets_reads_the_engines_network_list() -> None:
    listed = [
        {"Name": "host", "IPAM": {"Config": []}},
        {"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}},
        {"Name": "v6", "IPAM": {"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.9.0.0/24"}]}},
        {"Name": "odd", "IPAM": None},
    ]
    assert network_subnets(listed) == [net("172.17.0.0/16"), net("10.9.0.0/24")]


@pytest.mark.parametrize(
    ("pool", "size"), [("10.224.0.1/12", 24), ("not-a-network", 24), ("10.224.0.0/12", 8), ("10.0.0.0/24", 31)]
)
def test_an_unusable_pool_is_refused_at_startup(pool: str, size: int) -> None:
    with pytest.raises(ProviderLoadError, match="CTRLPLANE_DOCKER_SUBNET_"):
        DockerSettings.from_env({"CTRLPLANE_DOCKER_SUBNET_POOL": pool, "CTRLPLANE_DOCKER_SUBNET_SIZE": str(size)})


def test_the_pool_is_read_from_the_environment() -> None:
    settings = DockerSettings.from_env(
        {"CTRLPLANE_DOCKER_SUBNET_POOL": "10.64.0.0/16", "CTRLPLANE_DOCKER_SUBNET_SIZE": "26"}
    )
    assert SubnetPool(settings.subnet_pool, settings.subnet_size).count == 1024
