"""The router in front of real containers: ctrlplane programs a real Caddy through its admin API,
every instance answers on its default hostname, a Caddy restarted empty gets its routes back, and
deploys switch traffic with no failed request."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
from docker import DockerClient

from ctrlplane.network.router import config_loads_reset_connections
from ctrlplane.settings import Settings
from tests.api.test_deployments import finished
from tests.api.test_instances import wait_for
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    APP,
    _remove_what_the_test_made,
    providers,
    tenant,
)
from tests.conftest import Api
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.providers.docker_engine import (  # noqa: F401 - docker_engine is a fixture
    INDEX_BODY,
    V2_BODY,
    V2_IMAGE,
    docker_engine,
    ensure_variant_images,
)
from tests.waiting import eventually

pytestmark = pytest.mark.docker


@pytest.fixture
def settings(settings: Settings, caddy: Caddy) -> Settings:
    return msgspec.structs.replace(
        settings,
        providers=("docker",),
        router="caddy",
        router_admin_address=caddy.admin_address,
        router_http_listen=f"127.0.0.1:{caddy.http_port}",
        router_https_listen=f"127.0.0.1:{caddy.https_port}",
        router_sync_interval_seconds=1.0,
        router_drain_seconds=0.5,
        canary_observation_seconds=4.0,
        canary_traffic_percent=30,
    )


@pytest.fixture(scope="module")
def variant_images(docker_engine: DockerClient) -> Iterator[None]:
    ensure_variant_images(docker_engine)
    yield


async def through_router(caddy: Caddy, hostname: str, path: str = "/", timeout: float = 5) -> httpx.Response:
    async with httpx.AsyncClient(base_url=caddy.http_url, timeout=timeout) as client:
        return await client.get(path, headers={"Host": hostname})


async def until_served(caddy: Caddy, hostname: str, body: bytes, path: str = "/", timeout: float = 30) -> None:
    last: list[Any] = [None]

    async def served() -> bool:
        try:
            response = await through_router(caddy, hostname, path)
        except httpx.TransportError as exc:
            last[0] = exc
            return False
        last[0] = (response.status_code, response.content)
        return response.status_code == 200 and response.content == body

    await eventually(
        served,
        lambda: f"http://{hostname}{path} never served {body!r} through Caddy; last: {last[0]!r}",
        timeout=timeout,
    )


@dataclass
class ContinuousClient:
    """Calls the hostname through Caddy every 20 ms until stopped (at most ``limit`` requests), on a
    new connection each time: every change of Caddy's configuration is a graceful reload that closes
    idle keep-alive connections, and a request racing that close fails in a client that, unlike
    browsers, does not retry it (see docs/network.md). A new connection survives a reload only where
    the kernel hands the old listening socket's queue to the new one (``net.ipv4.tcp_migrate_req``,
    tests/network/test_caddy_reload.py); ``kernel`` says so in a failure message."""

    caddy: Caddy
    hostname: str
    limit: int = 6000
    bodies: Counter[bytes] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stopped: bool = False

    async def run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.caddy.http_url, timeout=10, limits=limits) as client:
            for _ in range(self.limit):
                if self.stopped:
                    return
                try:
                    response = await client.get("/", headers={"Host": self.hostname})
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:100]}")
                    else:
                        self.bodies[response.content] += 1
                except httpx.TransportError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.02)

    @property
    def total(self) -> int:
        return sum(self.bodies.values()) + len(self.failures)

    @property
    def kernel(self) -> str:
        return config_loads_reset_connections(self.caddy.admin_address) or "net.ipv4.tcp_migrate_req is 1"


async def running_instance(live: Api, token: dict[str, str], replicas: int = 2) -> dict[str, Any]:
    created = await live.client.post("/v1/instances", json={**APP, "name": "web", "replicas": replicas}, headers=token)
    assert created.status_code == 201, created.text
    return await wait_for(
        live, created.json()["id"], token, lambda b: b["state"] == "running" and len(b["endpoints"]) == replicas, 60
    )


async def test_every_instance_answers_on_its_default_hostname_through_caddy(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    await running_instance(live, token)
    await until_served(caddy, "web.acme.localhost", INDEX_BODY)
    unknown = await through_router(caddy, "nothing.acme.localhost")
    assert unknown.status_code == 404


async def test_a_caddy_restarted_empty_gets_every_route_back_within_an_interval(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    await running_instance(live, token, replicas=1)
    await until_served(caddy, "web.acme.localhost", INDEX_BODY)
    caddy.restart_empty()
    started = time.monotonic()
    await until_served(caddy, "web.acme.localhost", INDEX_BODY, timeout=30)
    assert time.monotonic() - started < 15


async def test_a_replica_removed_from_outside_is_routed_around(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    """A replica killed from outside (no drain) is routed around by retries and passive health
    checks while the reconciler replaces it. One request may still fail: Caddy 2.6 does not retry a
    request in flight in the old configuration at the instant of a reload, and the reload that
    drops the dead replica can meet one such request (docs/network.md). Without the retries about
    half of the requests would fail until the replica is replaced."""
    token = await tenant(live, "acme")
    instance = await running_instance(live, token)
    await until_served(caddy, "web.acme.localhost", INDEX_BODY)
    client = ContinuousClient(caddy, "web.acme.localhost")
    task = asyncio.create_task(client.run())
    await asyncio.sleep(0.5)
    [victim, *_] = docker_engine.containers.list(filters={"label": f"ctrlplane.instance={instance['id']}"})
    victim.remove(force=True)
    await wait_for(live, instance["id"], token, lambda b: len(b["endpoints"]) == 2, 60)
    await asyncio.sleep(2)
    client.stopped = True
    await task
    assert len(client.failures) <= 1, client.failures[:5]
    assert client.bodies[INDEX_BODY] > 10


# Slow by design: a whole deploy of real containers under continuous traffic through Caddy.
@pytest.mark.parametrize("strategy", ["rolling", "blue_green"])
async def test_a_continuous_client_sees_no_failed_request_during_a_deploy(
    live: Api, caddy: Caddy, docker_engine: DockerClient, variant_images: None, strategy: str
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token)
    await until_served(caddy, "web.acme.localhost", INDEX_BODY)
    client = ContinuousClient(caddy, "web.acme.localhost")
    task = asyncio.create_task(client.run())
    await asyncio.sleep(0.3)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": V2_IMAGE, "strategy": strategy}, headers=token
    )
    assert response.status_code == 201, response.text
    done = await finished(live, response.json()["id"], token, timeout=90)
    await asyncio.sleep(1.0)
    client.stopped = True
    await task
    assert done["state"] == "succeeded", done
    assert client.failures == [], (
        f"{len(client.failures)} of {client.total} failed ({client.kernel}): {client.failures[:5]}"
    )
    assert client.bodies[INDEX_BODY] > 0 and client.bodies[V2_BODY] > 0, client.bodies
    assert set(client.bodies) == {INDEX_BODY, V2_BODY}
    after = await through_router(caddy, "web.acme.localhost")
    assert after.content == V2_BODY


async def test_the_canary_gets_its_share_of_traffic_during_observation(
    live: Api, caddy: Caddy, docker_engine: DockerClient, variant_images: None
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token)
    await until_served(caddy, "web.acme.localhost", INDEX_BODY)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": V2_IMAGE, "strategy": "canary"}, headers=token
    )
    deployment_id = response.json()["id"]
    steps: list[dict[str, Any]] = []

    async def observing() -> bool:
        steps[:] = (await live.client.get(f"/v1/deployments/{deployment_id}", headers=token)).json()["steps"]
        return any(s["name"].startswith("observe canary") for s in steps)

    await eventually(observing, lambda: f"the canary never reached its observation: {steps}", timeout=30)
    await asyncio.sleep(0.5)
    seen: Counter[bytes] = Counter()
    async with httpx.AsyncClient(base_url=caddy.http_url, timeout=10) as http:
        for _ in range(60):
            answer = await http.get("/", headers={"Host": "web.acme.localhost"})
            assert answer.status_code == 200, answer.text
            seen[answer.content] += 1
    share = seen[V2_BODY] / sum(seen.values())
    assert 0.15 <= share <= 0.45, seen
    done = await finished(live, deployment_id, token, timeout=90)
    assert done["state"] == "succeeded", done
    await until_served(caddy, "web.acme.localhost", V2_BODY)
