"""A log drain against a real Docker engine: the lines busybox httpd writes for each request
arrive at the receiver labelled, within 5 s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from ctrlplane_docker import DockerProvider
from docker import DockerClient

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.test_instances import create, state, wait_for
from tests.api.test_instances_docker import APP, answer, tenant
from tests.conftest import Api
from tests.drains.test_log_drains import create_drain, ndjson_lines
from tests.providers.docker_engine import docker_engine, remove_cluster  # noqa: F401
from tests.webhooks.receiver import Receiver
from tests.webhooks.test_webhooks import eventually

pytestmark = pytest.mark.docker


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, providers=("docker",))


@pytest.fixture
def providers(settings: Settings, docker_engine: DockerClient) -> ProviderRegistry:
    return ProviderRegistry([DockerProvider(provider_settings(settings))])


@pytest.fixture(autouse=True)
def _remove_what_the_test_made(settings: Settings, docker_engine: DockerClient) -> Iterator[None]:
    yield
    remove_cluster(docker_engine, settings.cluster_name)


async def test_a_drain_receives_a_real_containers_lines_labelled_within_5s(
    live: Api, docker_engine: DockerClient, receiver: Receiver
) -> None:
    token = await tenant(live, "acme")
    instance = await create(live, token, name="web", **APP)
    running = await wait_for(live, instance["id"], token, state("running"), timeout=60)
    [endpoint] = running["endpoints"]
    await create_drain(live, token, url=receiver.url, instance_id=instance["id"])
    await answer(endpoint["url"] + "/")  # httpd -v logs the request on stderr

    async def first_line() -> list[dict[str, Any]] | None:
        return ndjson_lines(receiver) or None

    await eventually(first_line, timeout=15, what="the first request's line (the shipper starts following)")
    before = len(ndjson_lines(receiver))
    sent = time.monotonic()
    for path in ("/drain-probe-1", "/drain-probe-2", "/drain-probe-3"):
        assert (await answer(endpoint["url"] + path)).status_code == 404

    async def probes() -> list[dict[str, Any]] | None:
        # httpd -v writes "[client]:port: response:404" per request on stderr
        found = [line for line in ndjson_lines(receiver)[before:] if line["message"].endswith("response:404")]
        return found if len(found) >= 3 else None

    lines = await eventually(probes, timeout=5, what="the three requests' lines at the drain within 5 s")
    assert time.monotonic() - sent < 5
    assert len({line["message"] for line in lines}) == 3, "one line per request, none twice"
    for line in lines:
        assert line["tenant_id"] == running["tenant_id"] and line["instance_id"] == instance["id"]
        assert line["release_id"] == running["current_release_id"]
        assert line["replica"] == 0 and line["stream"] == "stderr" and line["level"] in ("info", "error", "warn")
