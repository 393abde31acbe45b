"""A deploy whose release phase fails, watched through the router: not one request fails and every
answer comes from the old release."""

from __future__ import annotations

import asyncio

import pytest
from docker import DockerClient

from tests.api.test_deployments import finished
from tests.api.test_instances_docker import _remove_what_the_test_made, providers, tenant  # noqa: F401
from tests.conftest import Api
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.network.test_router_docker import (  # noqa: F401 - fixtures
    ContinuousClient,
    running_instance,
    settings,
    until_served,
    variant_images,
)
from tests.providers.docker_engine import INDEX_BODY, V2_IMAGE, docker_engine  # noqa: F401 - fixture

pytestmark = pytest.mark.docker


async def test_a_failed_release_phase_keeps_the_old_release_serving_with_no_failed_request(
    live: Api, caddy: Caddy, docker_engine: DockerClient, variant_images: None
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token)
    await until_served(caddy, "web.acme.localhost", INDEX_BODY)
    client = ContinuousClient(caddy, "web.acme.localhost")
    task = asyncio.create_task(client.run())
    await asyncio.sleep(0.3)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": V2_IMAGE, "release_command": "sleep 1; echo migration failed; exit 1"},
        headers=token,
    )
    assert response.status_code == 201, response.text
    done = await finished(live, response.json()["id"], token, timeout=60)
    await asyncio.sleep(1.0)
    client.stopped = True
    await task
    assert done["state"] == "failed", done
    assert client.failures == [], (
        f"{len(client.failures)} of {client.total} failed ({client.kernel}): {client.failures[:5]}"
    )
    assert set(client.bodies) == {INDEX_BODY} and client.total > 20, client.bodies
