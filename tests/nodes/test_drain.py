"""Draining a node moves its instances to another ready node of the pool (docs/nodes.md, "Node
states, heartbeats, cordon and drain"), with two real agents."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import bearer
from tests.nodes.conftest import Fleet
from tests.nodes.test_agents import APP, CONVERGE, serves, tenant_token, until_state
from tests.waiting import eventually

pytestmark = pytest.mark.docker


async def test_draining_a_node_moves_its_instance_to_another_ready_node(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "drains")
        admin = bearer(fleet.tokens.admin())
        first = await fleet.join(http, "node-d1")
        created = await http.post("/v1/instances", json={**APP, "name": "web"}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        assert [c.status for c in fleet.containers(first, instance_id)] == ["running"]
        second = await fleet.join(http, "node-d2")

        async def ready() -> bool:
            nodes = (await http.get("/v1/admin/nodes", headers=admin)).json()["items"]
            return any(n["id"] == second.node_id and n["state"] == "ready" for n in nodes)

        await eventually(ready, "the second node is ready", timeout=60)
        drained = await http.post(f"/v1/admin/nodes/{first.node_id}/drain", headers=admin)
        assert drained.status_code == 200, drained.text
        assert drained.json()["state"] == "draining"

        def moved() -> bool:
            on_second = fleet.containers(second, instance_id)
            return not fleet.containers(first, instance_id) and [c.status for c in on_second] == ["running"]

        await eventually(moved, "the instance left the drained node for the other one", timeout=CONVERGE)
        seen: list[dict[str, Any]] = [{}]

        async def served_from_the_second_node() -> bool:
            seen[0] = (await http.get(f"/v1/instances/{instance_id}", headers=token)).json()
            endpoints = seen[0].get("endpoints") or []
            return seen[0]["state"] == "running" and bool(endpoints) and await serves(endpoints[0]["url"])

        await eventually(served_from_the_second_node, lambda: f"running again: {seen[0]}", timeout=CONVERGE)
        nodes = {n["id"]: n for n in (await http.get("/v1/admin/nodes", headers=admin)).json()["items"]}
        assert instance_id not in str(nodes[first.node_id].get("instances", [])), nodes[first.node_id]
