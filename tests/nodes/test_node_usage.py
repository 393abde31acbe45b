"""The usage of an instance on a node is what its agent shipped (docs/nodes.md, "Heartbeats and
telemetry"): each replica's own, as on Docker, in ``GET /v1/instances/{id}/resources`` and the
dashboard."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.nodes.conftest import Fleet
from tests.nodes.test_agents import APP, CONVERGE, tenant_token, until_state
from tests.waiting import eventually

pytestmark = pytest.mark.docker


async def test_each_replicas_usage_on_a_node_is_what_the_agent_shipped(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "usage")
        agent = await fleet.join(http, "node-u")
        created = await http.post("/v1/instances", json={**APP, "name": "web", "replicas": 2}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        seen: list[dict[str, Any]] = [{}]

        async def shipped() -> bool:
            response = await http.get(f"/v1/instances/{instance_id}/resources", headers=token)
            assert response.status_code == 200, response.text
            seen[0] = response.json()
            replicas = seen[0]["replicas"]
            return len(replicas) == 2 and all(r["running"] and r["memory_used_bytes"] > 0 for r in replicas)

        await eventually(shipped, lambda: f"both replicas' usage shown (last seen: {seen[0]})", timeout=CONVERGE)
        resources = seen[0]
        assert resources["available"] and resources["message"] == ""
        containers = {c.name: c for c in fleet.containers(agent, instance_id)}
        assert {r["name"] for r in resources["replicas"]} == set(containers)
        for replica in resources["replicas"]:
            labels = containers[replica["name"]].labels
            assert (replica["generation"], replica["replica"]) == (
                int(labels["ctrlplane.generation"]),
                int(labels["ctrlplane.replica"]),
            )
            assert replica["state"] == "running"
            # the node's limits: 300 MB per replica, as the engine enforces them
            assert replica["memory_limit_bytes"] == 300 * 1024 * 1024, replica
        assert resources["total_memory_used_bytes"] == sum(r["memory_used_bytes"] for r in resources["replicas"])

        dashboard = await http.get(f"/v1/instances/{instance_id}/dashboard", headers=token)
        assert dashboard.status_code == 200, dashboard.text
        assert [r["running"] for r in dashboard.json()["resources"]["replicas"]] == [True, True]

        # once the node stops shipping (its agent is gone), the node is unreachable: no usage now
        agent.stop()

        async def unavailable() -> bool:
            response = await http.get(f"/v1/instances/{instance_id}/dashboard", headers=token)
            return response.status_code == 200 and response.json()["resources"]["available"] is False

        await eventually(unavailable, "the dashboard says the node's usage is unavailable", timeout=60)
