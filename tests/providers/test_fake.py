"""The in-memory fake passes the same conformance suite as the real providers, so API and unit tests
that use it see a provider that behaves like one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ctrlplane.provisioning.contract import PortSpec, Provider, Resources, WorkloadSpec
from ctrlplane.provisioning.errors import ImageNotFound, ProviderError, ProviderUnavailable
from tests.fakes import FakeProvider
from tests.providers.conformance import AppImage, ProviderConformance, new_id


def fake(provider: Provider) -> FakeProvider:
    assert isinstance(provider, FakeProvider)
    return provider


class TestFakeProvider(ProviderConformance):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[Provider]:
        provider = FakeProvider()
        yield provider
        await provider.close()
        assert provider.closed

    @pytest.fixture
    async def unavailable_provider(self) -> AsyncIterator[Provider]:
        yield FakeProvider(available=False)

    @pytest.fixture
    def image(self) -> AppImage:
        return AppImage("ctrlplane-test/busybox:1", 8080)

    @pytest.fixture
    def missing_image(self, provider: Provider) -> str:
        name = f"ctrlplane-test/{new_id('missing')}:1"
        fake(provider).missing_images.add(name)
        return name

    async def crash(self, provider: Provider, instance_id: str, replica: int) -> int:
        fake(provider).crash(instance_id, replica, exit_code=2)
        return 2

    async def remove_replica(self, provider: Provider, instance_id: str, replica: int) -> None:
        fake(provider).remove_container(instance_id, replica)

    async def limits(self, provider: Provider, instance_id: str) -> list[Resources]:
        return [replica.resources for replica in fake(provider).replicas(instance_id)]

    async def write_log(self, provider: Provider, instance_id: str, message: str) -> None:
        fake(provider).emit_log(instance_id, message)


# -- the fake's own simulation helpers, which API tests drive --------------------------------------


def spec(**overrides: Any) -> WorkloadSpec:
    values: dict[str, Any] = {
        "instance_id": new_id("inst"),
        "tenant_id": new_id("ten"),
        "name": "fake",
        "image": "app:1",
        "resources": Resources(cpu_millis=100, memory_mb=32),
        "ports": (PortSpec(8080),),
    }
    values.update(overrides)
    return WorkloadSpec(**values)


async def test_fail_next_makes_only_the_next_call_of_that_method_raise() -> None:
    provider = FakeProvider()
    workload = spec()
    provider.fail_next("provision", ProviderError("engine said no"))
    with pytest.raises(ProviderError, match="engine said no"):
        await provider.provision(workload)
    assert (await provider.provision(workload)).state == "running"
    assert provider.calls == [("provision", workload.instance_id), ("provision", workload.instance_id)]


async def test_an_unavailable_fake_raises_provider_unavailable_until_it_is_back() -> None:
    provider = FakeProvider()
    workload = spec()
    await provider.provision(workload)
    provider.set_available(False)
    assert (await provider.ping()).message == "fake provider is down"
    with pytest.raises(ProviderUnavailable, match="fake provider is down"):
        await provider.status(workload.instance_id)
    provider.set_available(True)
    assert (await provider.status(workload.instance_id)).state == "running"


async def test_an_oom_crash_is_reported_with_its_reason() -> None:
    provider = FakeProvider()
    workload = spec()
    await provider.provision(workload)
    provider.crash(workload.instance_id, 0, oom=True)
    status = await provider.status(workload.instance_id)
    assert status.state == "failed"
    assert (status.replicas[0].oom_killed, status.replicas[0].exit_code) == (True, 137)
    assert "OOM-killed" in status.message


async def test_endpoints_get_fresh_deterministic_ports_on_loopback() -> None:
    provider = FakeProvider()
    workload = spec(replicas=2)
    status = await provider.provision(workload)
    assert [(e.host, e.host_port, e.url) for e in status.endpoints] == [
        ("127.0.0.1", 40000, "http://127.0.0.1:40000"),
        ("127.0.0.1", 40001, "http://127.0.0.1:40001"),
    ]
    restarted = await provider.restart(workload.instance_id, replicas=(0,))
    assert [e.host_port for e in restarted.endpoints] == [40002, 40001]


async def test_a_missing_image_that_may_be_pulled_names_the_failed_pull() -> None:
    provider = FakeProvider()
    provider.missing_images.add("app:404")
    with pytest.raises(ImageNotFound, match="pulling it failed"):
        await provider.provision(spec(image="app:404"))
