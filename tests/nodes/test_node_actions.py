"""A restart and an exec of an instance on a node are ``action_request`` executions a real agent
carries out once (docs/nodes.md, "Restart and exec"): the running containers are restarted, and a
``command`` health check runs in the replica on the node."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import bearer
from tests.nodes.conftest import Fleet
from tests.nodes.test_agents import APP, CONVERGE, serves, tenant_token, until_state
from tests.nodes.test_router_nodes import finished
from tests.providers.docker_engine import BROKEN_IMAGE, V2_IMAGE
from tests.waiting import eventually

pytestmark = pytest.mark.docker


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"CTRLPLANE_DEPLOY_HEALTH_TIMEOUT_SECONDS": "8"}


def started_at(container: Any) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


async def test_a_restart_restarts_the_running_containers_on_the_node(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "restarts")
        agent = await fleet.join(http, "node-x")
        created = await http.post("/v1/instances", json={**APP, "name": "web", "replicas": 2}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        before = {c.id: started_at(c) for c in fleet.containers(agent, instance_id)}
        assert len(before) == 2
        response = await http.post(f"/v1/instances/{instance_id}/restart", headers=token)
        assert response.status_code == 202, response.text

        def restarted() -> bool:
            now = {c.id: (started_at(c), c.status) for c in fleet.containers(agent, instance_id)}
            # the same containers (a restart, not a replacement), each started again and running
            return set(now) == set(before) and all(
                at != before[cid] and status == "running" for cid, (at, status) in now.items()
            )

        await eventually(restarted, "both running containers were restarted on the node", timeout=CONVERGE)
        await until_state(http, instance_id, token, "running")
        # the node acted on it once: one execution, accepted and successful
        admin = bearer(fleet.tokens.admin())
        audit = await http.get(
            "/v1/admin/audit", params={"resource": "node", "action": "execution_result"}, headers=admin
        )
        assert audit.status_code == 200, audit.text
        assert len(audit.json()["items"]) == 1, audit.json()["items"]


async def run_check(http: httpx.AsyncClient, instance_id: str, token: dict[str, str], target: str) -> dict[str, Any]:
    check = await http.post(
        f"/v1/instances/{instance_id}/health/checks",
        json={"name": target.split()[-1].strip("/").replace("/", "-") or "root", "type": "command", "target": target,
              "interval": "10m", "timeout": "5s", "retries": 1},
        headers=token,
    )  # fmt: skip
    assert check.status_code == 201, check.text
    run = await http.post(f"/v1/health/checks/{check.json()['id']}/run", headers=token)
    assert run.status_code == 200, run.text
    return dict(run.json()["result"])


async def test_a_command_health_check_runs_in_the_replica_on_the_node(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=60) as http:
        token = await tenant_token(http, fleet.tokens, "checks")
        await fleet.join(http, "node-c")
        created = await http.post("/v1/instances", json={**APP, "name": "web"}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        passing = await run_check(http, instance_id, token, "cat /www/index.html")
        assert passing["status"] == "pass", passing["message"]
        assert passing["message"].startswith("exit 0"), passing
        failing = await run_check(http, instance_id, token, "cat /nowhere")
        assert failing["status"] == "fail", failing["message"]
        assert failing["message"].startswith("exit 1"), failing


# Slow by design: three rollouts of two real replicas through a node agent (the create, a gated
# deploy that passes, a gated deploy that fails and is rolled back on the node).
async def test_a_command_check_gates_a_deploy_on_a_node(fleet: Fleet) -> None:
    """The deploy engine's gate runs the instance's command check in each new replica on the node:
    a passing check lets the deploy through; a failing one rolls it back, and the node is left
    running the previous generation alone."""
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=60) as http:
        token = await tenant_token(http, fleet.tokens, "gates")
        agent = await fleet.join(http, "node-g")
        created = await http.post("/v1/instances", json={**APP, "name": "web", "replicas": 2}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        check = await http.post(
            f"/v1/instances/{instance_id}/health/checks",
            json={"name": "kernel", "type": "command", "target": "cat /proc/version", "interval": "10m"},
            headers=token,
        )
        assert check.status_code == 201, check.text
        through = await http.post(f"/v1/instances/{instance_id}/deploy", json={"image": V2_IMAGE}, headers=token)
        assert through.status_code == 201, through.text
        done = await finished(http, through.json()["id"], token)
        assert done["state"] == "succeeded", done
        assert any("gate replicas" in step["name"] for step in done["steps"]), done["steps"]
        passed = {c.labels["ctrlplane.generation"] for c in fleet.containers(agent, instance_id)}
        assert len(passed) == 1
        changed = await http.patch(
            f"/v1/health/checks/{check.json()['id']}", json={"target": "cat /nowhere"}, headers=token
        )
        assert changed.status_code == 200, changed.text
        blocked = await http.post(f"/v1/instances/{instance_id}/deploy", json={"image": APP["image"]}, headers=token)
        assert blocked.status_code == 201, blocked.text
        ended = await finished(http, blocked.json()["id"], token)
        assert ended["state"] == "rolled_back", ended
        assert "exit 1" in (ended["error"] or ""), ended

        def only_the_previous_generation() -> bool:
            containers = fleet.containers(agent, instance_id)
            generations = {c.labels["ctrlplane.generation"] for c in containers}
            return generations == passed and len(containers) == 2 and all(c.status == "running" for c in containers)

        await eventually(only_the_previous_generation, "the node runs the previous generation alone", timeout=60)
        instance = await until_state(http, instance_id, token, "running")
        assert not await serves(instance["endpoints"][0]["url"])  # still v2: not the index page


async def test_a_deploy_of_an_image_that_exits_on_a_node_rolls_back_at_its_gate(fleet: Fleet) -> None:
    """A new replica that exits fails its gate at once (as on Docker), and going back leaves the
    node running the previous generation alone."""
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=60) as http:
        token = await tenant_token(http, fleet.tokens, "broken")
        agent = await fleet.join(http, "node-k")
        created = await http.post("/v1/instances", json={**APP, "name": "web", "replicas": 2}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        instance = await until_state(http, instance_id, token, "running")
        before = {c.labels["ctrlplane.generation"] for c in fleet.containers(agent, instance_id)}
        started = time.monotonic()
        deploy = await http.post(f"/v1/instances/{instance_id}/deploy", json={"image": BROKEN_IMAGE}, headers=token)
        assert deploy.status_code == 201, deploy.text
        ended = await finished(http, deploy.json()["id"], token)
        assert ended["state"] == "rolled_back", ended
        assert time.monotonic() - started < 60, ended
        assert "exited" in (ended["error"] or ""), ended

        def only_the_previous_generation() -> bool:
            containers = fleet.containers(agent, instance_id)
            generations = {c.labels["ctrlplane.generation"] for c in containers}
            return generations == before and len(containers) == 2 and all(c.status == "running" for c in containers)

        await eventually(only_the_previous_generation, "the node runs the previous generation alone", timeout=60)
        await eventually(lambda: serves(instance["endpoints"][0]["url"]), "it still serves", timeout=30)
