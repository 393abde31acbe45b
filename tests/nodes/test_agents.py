"""Real agents on the real Docker engine, joined to a real ``ctrlplane serve`` (docs/nodes.md)."""

from __future__ import annotations

import base64
import signal
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ctrlplane.nodes.contract import EncryptedSecret, decrypt_secret, open_node_secret_key
from tests.conftest import Tokens, bearer
from tests.nodes.conftest import Fleet
from tests.providers.docker_engine import HTTP_PORT, IMAGE, INDEX_BODY, V2_IMAGE
from tests.waiting import eventually

pytestmark = pytest.mark.docker

CONVERGE = 120.0
APP: dict[str, Any] = {
    "image": IMAGE,
    "ports": [{"container_port": HTTP_PORT}],
    "resources": {"cpu_millis": 100, "memory_mb": 300},
    "provider_name": "nodes",
}


async def tenant_token(http: httpx.AsyncClient, tokens: Tokens, slug: str) -> dict[str, str]:
    response = await http.post(
        "/v1/admin/tenants", json={"name": slug, "slug": slug, "plan": "pro"}, headers=bearer(tokens.admin())
    )
    assert response.status_code == 201, response.text
    return bearer(tokens.tenant(response.json()["id"]))


async def until_state(
    http: httpx.AsyncClient, instance_id: str, token: dict[str, str], state: str, timeout: float = CONVERGE
) -> dict[str, Any]:
    seen: list[dict[str, Any]] = [{}]

    async def reached() -> dict[str, Any] | None:
        seen[0] = (await http.get(f"/v1/instances/{instance_id}", headers=token)).json()
        return seen[0] if seen[0].get("state") == state and seen[0].get("endpoints") is not None else None

    return await eventually(reached, lambda: f"{instance_id} {state} (last seen: {seen[0]})", timeout=timeout)


async def serves(url: str) -> bool:
    async with httpx.AsyncClient(timeout=5) as direct:
        try:
            response = await direct.get(url)
        except httpx.TransportError:
            return False
    return response.status_code == 200 and response.content == INDEX_BODY


async def test_two_agents_register_receive_instances_and_serve_them(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "fleet")
        first = await fleet.join(http, "node-a")
        second = await fleet.join(http, "node-b")
        assert first.node_id != second.node_id
        placed: dict[str, str] = {}
        for name in ("web-1", "web-2"):
            created = await http.post("/v1/instances", json={**APP, "name": name}, headers=token)
            assert created.status_code == 201, created.text
            instance = await until_state(http, created.json()["id"], token, "running")
            assert instance["endpoints"], instance
            await eventually(lambda url=instance["endpoints"][0]["url"]: serves(url), f"{name} serves", timeout=30)
            placed[instance["id"]] = name
        web_1, web_2 = placed
        # each instance runs on one node, labelled with that node's cluster: the two agents share
        # the engine and each has one of them (each node offers 1024 MB; two 300 MB replicas spread
        # freest-first)
        on_first = {c.labels["ctrlplane.instance"] for c in fleet.containers(first)}
        on_second = {c.labels["ctrlplane.instance"] for c in fleet.containers(second)}
        assert on_first | on_second == {web_1, web_2}
        assert len(on_first) == len(on_second) == 1
        assert not on_first & on_second
        nodes = (await http.get("/v1/admin/nodes", headers=bearer(fleet.tokens.admin()))).json()["items"]
        assert {n["id"] for n in nodes} >= {first.node_id, second.node_id}


async def test_secrets_reach_the_container_and_travel_encrypted_with_the_node_key(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "secrets")
        agent = await fleet.join(http, "node-s")
        created = await http.post("/v1/instances", json={**APP, "name": "vault"}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        value = "s3cr3t-value-on-the-wire"
        for body in ({"key": "API_TOKEN", "value": value}, {"key": "/etc/app/key", "value": value, "type": "file"}):
            answer = await http.post(f"/v1/instances/{instance_id}/secrets", json=body, headers=token)
            assert answer.status_code == 201, answer.text
        deploy = await http.post(f"/v1/instances/{instance_id}/deploy", json={"image": IMAGE}, headers=token)
        assert deploy.status_code == 201, deploy.text

        def carries_secrets() -> bool:
            for container in fleet.containers(agent, instance_id):
                if container.status != "running":
                    continue
                env = container.exec_run(["env"]).output.decode()
                mounted = container.exec_run(["cat", "/etc/app/key"]).output.decode()
                if f"API_TOKEN={value}" in env and mounted == value:
                    return True
            return False

        await eventually(carries_secrets, "the secret env and file are in the container", timeout=CONVERGE)
        # on the wire, with the node's own credential: AES-256-GCM under the NSK, never the value
        identity = agent.identity()
        node = {"Authorization": f"Bearer {identity['credential']}"}
        state = (await http.get(f"/v1/nodes/{agent.node_id}/state", headers=node)).json()
        assert value not in str(state)
        workload = next(w for w in state["workloads"] if w["instance_id"] == instance_id)
        fetched = await http.get(f"/v1/nodes/{agent.node_id}/secrets/{workload['secret']['key']}", headers=node)
        assert fetched.status_code == 200, fetched.text
        assert value not in fetched.text and base64.b64encode(value.encode()).decode() not in fetched.text
        key = X25519PrivateKey.from_private_bytes((agent.state_dir / "node.key").read_bytes())
        nsk = open_node_secret_key(identity["sealed_node_secret_key"], key)
        sealed = EncryptedSecret(**fetched.json())
        assert value.encode() in decrypt_secret(nsk, sealed, node_id=agent.node_id)


async def test_sigkilled_agent_restarts_and_reconciles_without_duplicate_containers(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "restart")
        agent = await fleet.join(http, "node-k")
        created = await http.post("/v1/instances", json={**APP, "name": "kept", "replicas": 2}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        before = {c.name: c.id for c in fleet.containers(agent, instance_id)}
        assert len(before) == 2
        agent.kill()
        # while it is down one replica goes missing: the restarted agent must create exactly it
        missing_name = sorted(before)[0]
        fleet.engine.containers.get(before[missing_name]).remove(force=True)
        agent.token = None  # it rejoins from its state directory, with no bootstrap token
        agent.start()

        def converged() -> dict[str, str] | None:
            now = {c.name: c.id for c in fleet.containers(agent, instance_id) if c.status == "running"}
            return now if set(now) == set(before) else None

        after = await eventually(converged, lambda: f"two replicas again: {agent.log()[-2000:]}", timeout=CONVERGE)
        kept = sorted(before)[1]
        assert after[kept] == before[kept]  # adopted, not recreated
        assert len(fleet.containers(agent, instance_id)) == 2
        await until_state(http, instance_id, token, "running")
        assert len(fleet.containers(agent)) == 2


async def test_node_that_stops_heartbeating_shows_unknown_then_running_again(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "silent")
        agent = await fleet.join(http, "node-h")
        created = await http.post("/v1/instances", json={**APP, "name": "quiet"}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        before = [c.id for c in fleet.containers(agent, instance_id)]
        agent.signal(signal.SIGSTOP)
        try:
            unknown = await until_state(http, instance_id, token, "unknown", timeout=60)
            assert "unreachable" in unknown["status_message"], unknown
        finally:
            agent.signal(signal.SIGCONT)
        await until_state(http, instance_id, token, "running", timeout=60)
        assert [c.id for c in fleet.containers(agent, instance_id)] == before


# Slow by design: a real agent behind a tampering proxy converges from pulled state after refusing events.
async def test_agent_refuses_a_tampered_event_end_to_end(fleet: Fleet) -> None:
    """Between the agent and the control plane a proxy alters the events' payloads in flight
    (``"replicas":1`` becomes ``"replicas":3``); the agent refuses each such event, so it never
    runs three replicas, and the instance still converges from the state it pulls (the state is
    not an event: the proxy leaves it alone)."""
    from tests.nodes.tamper import TamperingProxy

    async with (
        httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http,
        TamperingProxy(fleet.server.url, b'"replicas":1', b'"replicas":3') as proxy,
    ):
        token = await tenant_token(http, fleet.tokens, "tamper")
        agent = await fleet.join(http, "node-t", url=proxy.url)
        created = await http.post("/v1/instances", json={**APP, "name": "guarded"}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        # the assignment may have reached the agent in its first state pull; a deploy now is an
        # event on the stream it follows
        deploy = await http.post(f"/v1/instances/{instance_id}/deploy", json={"image": V2_IMAGE}, headers=token)
        assert deploy.status_code == 201, deploy.text
        await eventually(
            lambda: "event_refused" in agent.log(),
            lambda: f"the agent refuses the tampered event ({proxy.tampered} altered): {agent.log()[-3000:]}",
            timeout=60,
        )
        assert proxy.tampered >= 1

        def deployed() -> bool:
            containers = fleet.containers(agent, instance_id)  # every replica, running or not
            return len(containers) == 1 and containers[0].status == "running" and containers[0].image.tags == [V2_IMAGE]

        await eventually(deployed, "the deploy converges from the pulled state", timeout=CONVERGE)
        await until_state(http, instance_id, token, "running")
        assert len(fleet.containers(agent)) == 1


async def test_control_plane_sigkilled_mid_assignment_converges(fleet: Fleet) -> None:
    """The control plane dies right after accepting an instance for a node, and comes back on
    another port behind the same address (a proxy): the agent reconnects and the instance runs once."""
    from tests.nodes.tamper import TamperingProxy

    async with (
        httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http,
        TamperingProxy(fleet.server.url) as proxy,
    ):
        token = await tenant_token(http, fleet.tokens, "restarts")
        agent = await fleet.join(http, "node-r", url=proxy.url)
        created = await http.post("/v1/instances", json={**APP, "name": "survivor"}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        fleet.server.kill()
        await fleet.server.start()
        proxy.point_at(fleet.server.url)
        http.base_url = httpx.URL(fleet.server.url)
        instance = await until_state(http, instance_id, token, "running")
        await eventually(lambda: serves(instance["endpoints"][0]["url"]), "it serves", timeout=30)
        assert len(fleet.containers(agent, instance_id)) == 1
        assert len(fleet.containers(agent)) == 1


async def test_agent_rotates_its_keys_and_follows_a_rotated_signing_key(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        admin = bearer(fleet.tokens.admin())
        token = await tenant_token(http, fleet.tokens, "rotation")
        agent = await fleet.join(http, "node-o")
        before = agent.identity()
        key_before = (agent.state_dir / "node.key").read_bytes()
        asked = await http.post(f"/v1/admin/nodes/{agent.node_id}/rotate-keys", headers=admin)
        assert asked.status_code == 200, asked.text
        # the agent stores the new credential, then promotes its new key: wait for both
        await eventually(
            lambda: (
                agent.identity()["credential"] != before["credential"]
                and (agent.state_dir / "node.key").read_bytes() != key_before
            ),
            lambda: f"a new credential and key: {agent.log()[-2000:]}",
            timeout=30,
        )
        rotated = await http.post("/v1/admin/nodes/signing-keys/rotate", headers=admin)
        assert rotated.status_code == 200, rotated.text
        current = rotated.json()["keys"]["current"]
        await eventually(
            lambda: agent.identity()["signing_keys"]["current"] == current,
            lambda: f"the agent knows the new signing key: {agent.log()[-2000:]}",
            timeout=30,
        )
        # events signed with the new key are verified and acted on
        mark = len(agent.log())
        created = await http.post("/v1/instances", json={**APP, "name": "after"}, headers=token)
        assert created.status_code == 201, created.text
        await until_state(http, created.json()["id"], token, "running")
        assert len(fleet.containers(agent, created.json()["id"])) == 1
        since = agent.log()[mark:]
        assert "event_received" in since and "workload_assigned" in since, since
        assert "event_refused" not in since, since


async def test_telemetry_batches_show_in_the_instances_logs_and_metrics(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "telemetry")
        await fleet.join(http, "node-m")
        created = await http.post("/v1/instances", json={**APP, "name": "chatty"}, headers=token)
        assert created.status_code == 201, created.text
        instance = await until_state(http, created.json()["id"], token, "running")
        url = instance["endpoints"][0]["url"]

        async def logged() -> list[dict[str, Any]]:
            await serves(url)  # busybox httpd -v writes a line per request to stderr
            answer = (await http.get(f"/v1/instances/{instance['id']}/logs", headers=token)).json()
            return list(answer["items"])

        lines = await eventually(logged, "the node's log batches reach the instance's logs", timeout=60)
        assert all(line["replica"] == 0 for line in lines), lines

        async def sampled() -> list[Any]:
            path = f"/v1/instances/{instance['id']}/metrics?name=memory_used_bytes"
            answer = (await http.get(path, headers=token)).json()
            return [point for series in answer["series"] for point in series["points"]]

        points = await eventually(sampled, "the node's metric batches reach the instance's metrics", timeout=60)
        assert any(point["value"] > 0 for point in points), points


# Slow by design: the node's refusal goes through the provision's retries before the instance is failed.
async def test_an_instance_its_node_cannot_run_fails_with_the_nodes_reason(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "missing")
        agent = await fleet.join(http, "node-x")
        body = {**APP, "name": "absent", "image": "ctrlplane-test/absent:none", "pull_policy": "Never"}
        created = await http.post("/v1/instances", json=body, headers=token)
        assert created.status_code == 201, created.text
        failed = await until_state(http, created.json()["id"], token, "failed")
        assert agent.node_id in failed["status_message"] and "absent" in failed["status_message"], failed
        assert fleet.containers(agent) == []
        assert agent.process is not None and agent.process.poll() is None  # the agent runs on


async def test_stop_releases_the_node_and_start_places_the_instance_again(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.server.url, timeout=30) as http:
        token = await tenant_token(http, fleet.tokens, "stopstart")
        agent = await fleet.join(http, "node-p")
        created = await http.post("/v1/instances", json={**APP, "name": "pausable"}, headers=token)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        await until_state(http, instance_id, token, "running")
        stopped = await http.post(f"/v1/instances/{instance_id}/stop", headers=token)
        assert stopped.status_code == 202, stopped.text
        await until_state(http, instance_id, token, "stopped")
        await eventually(
            lambda: fleet.containers(agent, instance_id) == [], "the node removed its containers", timeout=60
        )
        started = await http.post(f"/v1/instances/{instance_id}/start", headers=token)
        assert started.status_code == 202, started.text
        instance = await until_state(http, instance_id, token, "running")
        await eventually(lambda: serves(instance["endpoints"][0]["url"]), "it serves again", timeout=30)
        assert len(fleet.containers(agent, instance_id)) == 1
