"""SIGKILL of the server during a deploy's release phase: when a server is back, the deploy ends
``failed`` (the command is not rerun), the release container is gone and the old replicas, never
touched, keep serving."""

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
from tests.providers.docker_engine import V2_IMAGE, docker_engine, ensure_variant_images  # noqa: F401

pytestmark = pytest.mark.docker


def listed(engine: DockerClient, instance_id: str) -> list[dict[str, Any]]:
    """The instance's containers as the engine lists them (no inspect: one removed meanwhile is no error)."""
    return list(engine.api.containers(all=True, filters={"label": f"ctrlplane.instance={instance_id}"}))


async def test_killed_during_the_release_phase_the_deploy_fails_and_nothing_was_replaced(
    server: ServeProcess, api: Api, docker_engine: DockerClient
) -> None:
    ensure_variant_images(docker_engine)
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        remote = Api(http, api.tokens)
        token = await tenant(remote, "acme")
        created = await remote.client.post("/v1/instances", json={**APP, "name": "web"}, headers=token)
        instance = await wait_for(remote, created.json()["id"], token, state("running"), timeout=30)
        replicas = {c["Id"] for c in listed(docker_engine, instance["id"])}
        response = await remote.client.post(
            f"/v1/instances/{instance['id']}/deploy",
            json={"image": V2_IMAGE, "release_command": "echo started; sleep 120"},
            headers=token,
        )
        assert response.status_code == 201, response.text
        for _ in range(300):
            if any("ctrlplane.run" in c["Labels"] for c in listed(docker_engine, instance["id"])):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the release container never started")
        server.kill()
        await server.start()
        http.base_url = server.url
        done = await finished(remote, response.json()["id"], token, timeout=90)
        assert done["state"] == "failed", done
        assert "release phase" in done["error"]
        after = await wait_for(remote, instance["id"], token, state("running"), timeout=30)
        assert after["image"] == APP["image"]
        assert {c["Id"] for c in listed(docker_engine, instance["id"])} == replicas
        runs = (await remote.client.get(f"/v1/instances/{instance['id']}/runs", headers=token)).json()["items"]
        assert [(r["kind"], r["state"]) for r in runs] == [("release", "failed")]
