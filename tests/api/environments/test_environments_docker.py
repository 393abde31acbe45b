"""Environments against a real Docker engine behind a real Caddy: served on their hostname through
the router, one set of containers for 20 concurrent get-or-creates, expiry that frees the hostname,
soft terminate that the app sees as SIGTERM, hard terminate that does not wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from ctrlplane_docker import DockerProvider
from docker import DockerClient

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.environments.helpers import ready_members, tenant, up, wait_env
from tests.api.test_instances_docker import _remove_what_the_test_made, containers_of  # noqa: F401 - fixture
from tests.conftest import Api
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.network.test_router_docker import through_router, until_served
from tests.providers.docker_engine import (  # noqa: F401 - docker_engine is a fixture
    HTTP_PORT,
    IMAGE,
    INDEX_BODY,
    docker_engine,
    import_once,
    rootfs_tar,
)

pytestmark = pytest.mark.docker

TRAP_IMAGE = "ctrlplane-test/busybox:sigterm"
GRACE_SECONDS = 8


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
        router_drain_seconds=0.2,
        reconcile_interval_seconds=0.5,
    )


@pytest.fixture
def providers(settings: Settings, docker_engine: DockerClient) -> ProviderRegistry:
    return ProviderRegistry([DockerProvider(provider_settings(settings), stop_timeout=GRACE_SECONDS)])


@pytest.fixture(scope="module")
def trap_image(docker_engine: DockerClient) -> Iterator[str]:
    """The test app, whose shell (PID 1) exits 0 when it receives SIGTERM: an exit code of 0 proves
    the app saw the signal; 137 that it was killed."""
    command = (
        'CMD ["/bin/sh", "-c", "trap \'echo got SIGTERM; exit 0\' TERM; '
        f'httpd -p {HTTP_PORT} -h /www; while :; do sleep 1 & wait $!; done"]'
    )
    import_once(docker_engine, TRAP_IMAGE, rootfs_tar, [command, "ENV PATH=/bin"])
    yield TRAP_IMAGE


def spec(image: str) -> dict[str, Any]:
    return {
        "image": image,
        "ports": [{"container_port": HTTP_PORT}],
        "resources": {"cpu_millis": 100, "memory_mb": 32},
        "env": {"PR": "{{pr}}"},
    }


async def preview_template(api: Api, token: dict[str, str], image: str = IMAGE, **overrides: Any) -> None:
    body = {
        "name": "preview",
        "spec": spec(image),
        "parameters": [{"name": "pr", "type": "integer", "required": True}],
        **overrides,
    }
    response = await api.client.post("/v1/templates", json=body, headers=token)
    assert response.status_code == 201, response.text


def exits(engine: DockerClient, instance_id: str, since: float) -> list[dict[str, Any]]:
    """The instance's containers' kill and die events since ``since``: signals sent, exit codes."""
    found = []
    for event in engine.events(
        since=since,
        until=time.time() + 0.5,
        decode=True,
        filters={"type": "container", "label": f"ctrlplane.instance={instance_id}"},
    ):
        if event.get("Action") in ("kill", "die"):
            attributes = event["Actor"]["Attributes"]
            found.append(
                {"action": event["Action"], "signal": attributes.get("signal"), "exit": attributes.get("exitCode")}
            )
    return found


# Slow by design: the 20 s TTL runs out (shorter, a start under load could outlast it).
async def test_environment_is_served_through_the_router_and_expiry_frees_its_hostname(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    _, token = await tenant(live)
    await preview_template(live, token, max_environments_per_owner=1)
    environment = await up(live, token, key="pr-7", parameters={"pr": 7}, ttl="20s")
    assert environment["url"] == f"http://{environment['hostname']}:{caddy.http_port}"
    await until_served(caddy, environment["hostname"], INDEX_BODY)
    again = await up(live, token, key="pr-7", parameters={"pr": "7"}, status=200)
    assert again["id"] == environment["id"]
    instance = (await live.client.get(f"/v1/instances/{environment['instance_id']}", headers=token)).json()
    assert instance["env"]["PR"] == "7"
    [container] = containers_of(docker_engine, environment["instance_id"])
    assert container.status == "running"
    expired = await wait_env(live, environment["id"], token, lambda e: e["state"] == "terminated", timeout=60)
    assert expired["termination_reason"] == "expired"
    assert containers_of(docker_engine, environment["instance_id"]) == []
    deadline = time.monotonic() + 10
    while (await through_router(caddy, environment["hostname"])).status_code == 200:
        assert time.monotonic() < deadline, "the router still serves an expired environment's hostname"
        await asyncio.sleep(0.2)
    # the owner's quota place is free again
    await up(live, token, key="pr-8", parameters={"pr": 8})


@pytest.mark.dialects("the unique index on live keys under concurrent requests")
async def test_twenty_parallel_get_or_creates_start_one_set_of_containers(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    _, token = await tenant(live)
    await preview_template(live, token)
    body = {"key": "pr-1", "template": "preview", "parameters": {"pr": 1}}
    responses = await asyncio.gather(
        *(live.client.post("/v1/environments", json=body, headers=token) for _ in range(20))
    )
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    [environment_id] = {r.json()["id"] for r in responses}
    [instance_id] = {r.json()["instance_id"] for r in responses}
    environment = await wait_env(live, environment_id, token, lambda e: e["instance_state"] == "running", timeout=60)
    await until_served(caddy, environment["hostname"], INDEX_BODY)
    assert len(containers_of(docker_engine, instance_id)) == 1
    labelled = docker_engine.containers.list(all=True, filters={"label": "ctrlplane.cluster=" + live_cluster(live)})
    assert len([c for c in labelled if c.labels.get("ctrlplane.instance")]) == 1


def live_cluster(api: Api) -> str:
    return str(api.tokens.settings.cluster_name)


async def test_soft_terminate_sends_sigterm_first_and_hard_does_not_wait(
    live: Api, docker_engine: DockerClient, trap_image: str
) -> None:
    _, token = await tenant(live)
    await preview_template(live, token, image=trap_image)
    soft = await up(live, token, key="soft", parameters={"pr": 1})
    hard = await up(live, token, key="hard", parameters={"pr": 2})
    for environment in (soft, hard):
        await wait_env(live, environment["id"], token, lambda e: e["instance_state"] == "running", timeout=60)
    since = datetime.now(UTC).timestamp() - 1

    started = time.monotonic()
    response = await live.client.post(f"/v1/environments/{hard['id']}/terminate", json={"hard": True}, headers=token)
    assert response.status_code == 202, response.text
    await wait_env(live, hard["id"], token, lambda e: e["state"] == "terminated", timeout=30)
    hard_seconds = time.monotonic() - started
    hard_exits = exits(docker_engine, hard["instance_id"], since)
    assert [e["signal"] for e in hard_exits if e["action"] == "kill"][:1] == ["9"], hard_exits
    assert [e["exit"] for e in hard_exits if e["action"] == "die"] == ["137"], hard_exits

    response = await live.client.post(f"/v1/environments/{soft['id']}/terminate", json={"hard": False}, headers=token)
    assert response.status_code == 202, response.text
    await wait_env(live, soft["id"], token, lambda e: e["state"] == "terminated", timeout=30)
    soft_exits = exits(docker_engine, soft["instance_id"], since)
    assert [e["signal"] for e in soft_exits if e["action"] == "kill"][:1] == ["15"], soft_exits
    # the app's own SIGTERM handler ended it (exit 0), not the SIGKILL after the grace period
    assert [e["exit"] for e in soft_exits if e["action"] == "die"] == ["0"], soft_exits
    assert hard_seconds < GRACE_SECONDS


async def test_a_pool_claim_starts_no_container_and_the_pool_refills(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    _, token = await tenant(live)
    body = {"name": "sandbox", "spec": {**spec(IMAGE), "env": {}}, "pool": {"min_ready": 1, "max_ready": 1}}
    assert (await live.client.post("/v1/templates", json=body, headers=token)).status_code == 201
    [member] = await ready_members(live, token, 1, timeout=60)
    await until_served(caddy, member["hostname"], INDEX_BODY)
    cluster = live.tokens.settings.cluster_name
    before = time.time()
    response = await live.client.post("/v1/environments", json={"key": "u-1", "template": "sandbox"}, headers=token)
    answered = time.time()
    assert response.status_code == 201, response.text
    claimed = response.json()
    assert claimed["id"] == member["id"] and claimed["instance_state"] == "running"

    def starts(since: float, until: float) -> list[str]:
        filters = {"type": "container", "event": "start", "label": f"ctrlplane.cluster={cluster}"}
        events = docker_engine.events(since=since, until=until, decode=True, filters=filters)
        return [event["Actor"]["Attributes"]["ctrlplane.instance"] for event in events]

    assert starts(before, answered + 0.01) == []
    # served at once on the member's hostname, which the router already had
    assert (await through_router(caddy, claimed["hostname"])).status_code == 200
    [refilled] = await ready_members(live, token, 1, timeout=60)
    assert refilled["id"] != claimed["id"]
    assert len(containers_of(docker_engine, refilled["instance_id"])) == 1
    await until_served(caddy, refilled["hostname"], INDEX_BODY)
    # the refill did start one (so the look-up above can see a start)
    assert refilled["instance_id"] in starts(answered, time.time() + 0.5)
