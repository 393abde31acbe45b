"""Deployments against a real Docker engine: new images really serve, a failing gate really rolls
back, and a control plane killed mid-deploy leaves nothing half-done."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from docker import DockerClient

from tests.api.test_deployments import finished
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    APP,
    _remove_what_the_test_made,
    containers_of,
    providers,
    server,
    settings,
    tenant,
)
from tests.conftest import Api
from tests.harness import ServeProcess
from tests.providers.docker_engine import (  # noqa: F401 - docker_engine is a fixture
    BROKEN_IMAGE,
    IMAGE,
    V2_BODY,
    V2_IMAGE,
    docker_engine,
    ensure_variant_images,
)

pytestmark = pytest.mark.docker

V2, BROKEN = V2_IMAGE, BROKEN_IMAGE


@pytest.fixture(scope="module")
def variant_images(docker_engine: DockerClient) -> None:
    ensure_variant_images(docker_engine)


async def bodies(api: Api, instance_id: str, token: dict[str, str]) -> set[bytes]:
    """What each endpoint the instance reports answers now (b"" where nothing answers: the record
    can lag a moment behind a replaced container)."""
    instance = (await api.client.get(f"/v1/instances/{instance_id}", headers=token)).json()
    answers = set()
    async with httpx.AsyncClient(timeout=3) as client:
        for endpoint in instance["endpoints"]:
            try:
                answers.add((await client.get(endpoint["url"] + "/")).content)
            except httpx.TransportError:
                answers.add(b"")
    return answers


async def deploy(api: Api, instance: dict[str, Any], token: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.client.post(f"/v1/instances/{instance['id']}/deploy", json=body, headers=token)
    assert response.status_code == 201, response.text
    return await finished(api, response.json()["id"], token, timeout=60)


# Slow by design: each strategy's real deploy of two containers (canary: its observation window).
@pytest.mark.parametrize("strategy", ["rolling", "blue_green", "canary", "recreate"])
async def test_each_strategy_serves_the_new_image_afterwards(
    live: Api,
    docker_engine: DockerClient,
    variant_images: None,
    strategy: str,
) -> None:
    token = await tenant(live, "acme")
    created = await live.client.post("/v1/instances", json={**APP, "name": "web", "replicas": 2}, headers=token)
    instance = await wait_for(live, created.json()["id"], token, state("running"), timeout=30)
    done = await deploy(live, instance, token, image=V2, strategy=strategy)
    assert done["state"] == "succeeded", done
    await wait_for(live, instance["id"], token, lambda b: len(b["endpoints"]) == 2, timeout=30)
    for _ in range(100):
        if await bodies(live, instance["id"], token) == {V2_BODY}:
            break
        await asyncio.sleep(0.1)
    assert await bodies(live, instance["id"], token) == {V2_BODY}
    containers = containers_of(docker_engine, instance["id"])
    assert len(containers) == 2
    assert {c.labels["ctrlplane.generation"] for c in containers} == {"2"}


async def test_a_new_image_that_fails_its_gate_rolls_back_and_the_old_keeps_serving(
    live: Api,
    docker_engine: DockerClient,
    variant_images: None,
) -> None:
    token = await tenant(live, "acme")
    created = await live.client.post("/v1/instances", json={**APP, "name": "web"}, headers=token)
    instance = await wait_for(live, created.json()["id"], token, state("running"), timeout=30)
    done = await deploy(live, instance, token, image=BROKEN, strategy="rolling")
    assert done["state"] == "rolled_back"
    assert "exit" in done["error"]
    after = await wait_for(live, instance["id"], token, state("running"), timeout=30)
    assert after["image"] == IMAGE
    assert after["current_release_id"] == instance["current_release_id"]
    assert {c.labels["ctrlplane.generation"] for c in containers_of(docker_engine, instance["id"])} == {"1"}
    assert b"hello from busybox httpd" in next(iter(await bodies(live, instance["id"], token)))


# Slow by design: two server lifetimes around a SIGKILL mid deploy, then the deploy's recovery on real containers.
@pytest.mark.dialects("crash recovery: a killed server's transaction, lock and lease")
@pytest.mark.parametrize("delay", [0.3, 1.0])
async def test_killed_mid_deploy_the_deploy_ends_cleanly_with_no_extra_containers(
    server: ServeProcess,
    api: Api,
    docker_engine: DockerClient,
    variant_images: None,
    delay: float,
) -> None:
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        remote = Api(http, api.tokens)
        token = await tenant(remote, "acme")
        created = await remote.client.post("/v1/instances", json={**APP, "name": "web", "replicas": 2}, headers=token)
        instance = await wait_for(remote, created.json()["id"], token, state("running"), timeout=30)
        response = await remote.client.post(
            f"/v1/instances/{instance['id']}/deploy", json={"image": V2, "strategy": "rolling"}, headers=token
        )
        await asyncio.sleep(delay)
        server.kill()
        await server.start()
        http.base_url = server.url  # a new lifetime, a new port
        done = await finished(remote, response.json()["id"], token, timeout=60)
        assert done["state"] in ("succeeded", "rolled_back"), done
        await wait_for(remote, instance["id"], token, state("running"), timeout=30)
        await asyncio.sleep(1.5)
        containers = containers_of(docker_engine, instance["id"])
        expected = "2" if done["state"] == "succeeded" else "1"
        assert [c.labels["ctrlplane.generation"] for c in containers] == [expected, expected]


async def test_cancel_in_the_middle_of_a_rolling_deploy_puts_every_old_replica_back(
    live: Api,
    docker_engine: DockerClient,
    variant_images: None,
) -> None:
    token = await tenant(live, "acme")
    created = await live.client.post("/v1/instances", json={**APP, "name": "web", "replicas": 3}, headers=token)
    instance = await wait_for(live, created.json()["id"], token, state("running"), timeout=30)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": V2, "strategy": "rolling"}, headers=token
    )
    deployment_id = response.json()["id"]
    second = await live.client.post(f"/v1/instances/{instance['id']}/deploy", json={"image": V2}, headers=token)
    assert second.status_code == 409
    for _ in range(300):
        steps = (await live.client.get(f"/v1/deployments/{deployment_id}", headers=token)).json()["steps"]
        if any(s["name"] == "retire old replica 0" for s in steps):
            break
        await asyncio.sleep(0.02)
    assert (await live.client.post(f"/v1/deployments/{deployment_id}/cancel", headers=token)).status_code == 202
    done = await finished(live, deployment_id, token, timeout=60)
    assert done["state"] == "cancelled", done
    await wait_for(live, instance["id"], token, lambda b: len(b["endpoints"]) == 3, timeout=30)
    containers = containers_of(docker_engine, instance["id"])
    assert sorted((c.labels["ctrlplane.generation"], c.labels["ctrlplane.replica"]) for c in containers) == [
        ("1", "0"),
        ("1", "1"),
        ("1", "2"),
    ]
    for _ in range(100):
        if await bodies(live, instance["id"], token) == {b"ctrlplane test app: hello from busybox httpd\n"}:
            break
        await asyncio.sleep(0.1)
    assert await bodies(live, instance["id"], token) == {b"ctrlplane test app: hello from busybox httpd\n"}
