"""The router in front of an instance on a node: a real Caddy programmed by ``ctrlplane serve``, a
real agent running the instance, and deploys that switch traffic with no failed request
(issue 19; the same property as tests/network/test_router_docker.py for the Docker provider)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.network.test_router_docker import ContinuousClient, through_router, until_served
from tests.nodes.conftest import Fleet
from tests.nodes.test_agents import APP, tenant_token, until_state
from tests.providers.docker_engine import INDEX_BODY, V2_BODY, V2_IMAGE
from tests.waiting import eventually

pytestmark = pytest.mark.docker


@pytest.fixture
def server_env(caddy: Caddy) -> Iterator[dict[str, str]]:
    yield {
        "CTRLPLANE_ROUTER": "caddy",
        "CTRLPLANE_ROUTER_ADMIN_ADDRESS": caddy.admin_address,
        "CTRLPLANE_ROUTER_HTTP_LISTEN": f"127.0.0.1:{caddy.http_port}",
        "CTRLPLANE_ROUTER_HTTPS_LISTEN": f"127.0.0.1:{caddy.https_port}",
        "CTRLPLANE_ROUTER_SYNC_INTERVAL_SECONDS": "1",
        "CTRLPLANE_ROUTER_DRAIN_SECONDS": "0.5",
        "CTRLPLANE_CANARY_OBSERVATION_SECONDS": "3",
    }


async def finished(http: httpx.AsyncClient, deployment_id: str, token: dict[str, str]) -> dict[str, Any]:
    seen: list[dict[str, Any]] = [{}]

    async def done() -> dict[str, Any] | None:
        seen[0] = (await http.get(f"/v1/deployments/{deployment_id}", headers=token)).json()
        return seen[0] if seen[0].get("state") not in ("pending", "running") else None

    return await eventually(done, lambda: f"deployment {deployment_id} finished (last: {seen[0]})", timeout=180)


# Slow by design: a whole deploy of two replicas on a node agent, under continuous traffic through Caddy.
@pytest.mark.parametrize("strategy", ["rolling", "blue_green", "canary"])
async def test_a_deploy_of_an_instance_on_a_node_fails_no_request_through_the_router(
    fleet: Fleet,
    caddy: Caddy,
    strategy: str,
) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "edge")
        agent = await fleet.join(http, "node-r")
        created = await http.post("/v1/instances", json={**APP, "name": "web", "replicas": 2}, headers=token)
        assert created.status_code == 201, created.text
        instance = await until_state(http, created.json()["id"], token, "running")
        await until_served(caddy, "web.edge.localhost", INDEX_BODY, timeout=60)
        client = ContinuousClient(caddy, "web.edge.localhost")
        task = asyncio.create_task(client.run())
        await asyncio.sleep(0.3)
        response = await http.post(
            f"/v1/instances/{instance['id']}/deploy", json={"image": V2_IMAGE, "strategy": strategy}, headers=token
        )
        assert response.status_code == 201, response.text
        done = await finished(http, response.json()["id"], token)
        await asyncio.sleep(1.0)
        client.stopped = True
        await task
        assert done["state"] == "succeeded", done
        assert client.failures == [], (
            f"{len(client.failures)} of {client.total} failed ({client.kernel}): {client.failures[:5]}"
        )
        assert client.bodies[INDEX_BODY] > 0 and client.bodies[V2_BODY] > 0, client.bodies
        assert set(client.bodies) == {INDEX_BODY, V2_BODY}
        assert (await through_router(caddy, "web.edge.localhost")).content == V2_BODY
        # the old generation is gone from the node once the deploy is over
        generations = {c.labels["ctrlplane.generation"] for c in fleet.containers(agent, instance["id"])}
        assert len(generations) == 1, generations


async def test_a_recreate_deploy_on_a_node_removes_the_old_generation_first(fleet: Fleet, caddy: Caddy) -> None:
    """``recreate`` removes the generation the node runs (its replica count drops to none) before
    the new one starts: the two never run side by side."""
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "recreates")
        agent = await fleet.join(http, "node-q")
        created = await http.post("/v1/instances", json={**APP, "name": "web", "replicas": 2}, headers=token)
        assert created.status_code == 201, created.text
        instance = await until_state(http, created.json()["id"], token, "running")
        old = {c.labels["ctrlplane.generation"] for c in fleet.containers(agent, instance["id"])}
        seen: list[set[str]] = []
        watching = True

        async def watch() -> None:
            while watching:
                seen.append({c.labels["ctrlplane.generation"] for c in fleet.containers(agent, instance["id"])})
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        response = await http.post(
            f"/v1/instances/{instance['id']}/deploy", json={"image": V2_IMAGE, "strategy": "recreate"}, headers=token
        )
        assert response.status_code == 201, response.text
        done = await finished(http, response.json()["id"], token)
        watching = False
        await watcher
        assert done["state"] == "succeeded", done
        (new,) = {c.labels["ctrlplane.generation"] for c in fleet.containers(agent, instance["id"])}
        assert {new} != old
        assert not any(len(generations) > 1 for generations in seen), seen
        await until_served(caddy, "web.recreates.localhost", V2_BODY, timeout=60)
