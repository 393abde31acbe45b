"""A hard terminate of an instance on a node kills its replicas at once (docs/nodes.md, "Restart,
exec and kill"), as on Docker: the node gets a ``ctrlplane.instance.kill`` execution before the
instance's removal, so the containers see SIGKILL, not SIGTERM and a grace period."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.api.environments.test_environments_docker import exits
from tests.nodes.conftest import Fleet
from tests.nodes.test_agents import CONVERGE, tenant_token
from tests.providers.docker_engine import HTTP_PORT, IMAGE
from tests.waiting import eventually

pytestmark = pytest.mark.docker

TEMPLATE = {
    "name": "preview",
    "spec": {
        "image": IMAGE,
        "ports": [{"container_port": HTTP_PORT}],
        "resources": {"cpu_millis": 100, "memory_mb": 64},
    },
    "parameters": [],
    "max_ttl": "7d",
}


@pytest.fixture
def server_env() -> dict[str, str]:
    # environments run on the first provider: the nodes
    return {"CTRLPLANE_PROVIDERS": "nodes,docker"}


async def test_a_hard_terminate_kills_the_replicas_on_the_node_at_once(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "terminate")
        agent = await fleet.join(http, "node-t")
        created = await http.post("/v1/templates", json=TEMPLATE, headers=token)
        assert created.status_code == 201, created.text
        response = await http.post("/v1/environments", json={"key": "hard", "template": "preview"}, headers=token)
        assert response.status_code == 201, response.text
        environment = response.json()

        async def running() -> bool:
            seen = (await http.get(f"/v1/environments/{environment['id']}", headers=token)).json()
            return seen["instance_state"] == "running"

        await eventually(running, "the environment's instance runs on the node", timeout=CONVERGE)
        instance_id = environment["instance_id"]
        assert fleet.containers(agent, instance_id), "its replica is on the node"
        since = time.time() - 1
        response = await http.post(
            f"/v1/environments/{environment['id']}/terminate", json={"hard": True}, headers=token
        )
        assert response.status_code == 202, response.text

        async def ended() -> bool:
            seen = (await http.get(f"/v1/environments/{environment['id']}", headers=token)).json()
            return seen["state"] == "terminated" and not fleet.containers(agent, instance_id)

        await eventually(ended, "the environment ended and its containers left the node", timeout=60)
        found = exits(fleet.engine, instance_id, since)
        assert [e["signal"] for e in found if e["action"] == "kill"][:1] == ["9"], found
        assert [e["exit"] for e in found if e["action"] == "die"] == ["137"], found
