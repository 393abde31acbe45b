"""The control-plane side of seed 002 through the HTTP API: enrolment, node identity and isolation,
signed events with replay, secrets under the node's key, reports, telemetry batches, admin controls."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from litestar import Litestar
from sqlalchemy import select, update

from ctrlplane.db import Database
from ctrlplane.errors import Conflict
from ctrlplane.nodes import contract
from ctrlplane.nodes.models import EnrollmentToken, Node, NodeLogLine
from ctrlplane.nodes.monitor import NodeMonitor
from ctrlplane.provisioning.contract import Resources, SecretFile, WorkloadSpec
from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import instance_token
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices
from tests.conftest import Api, bearer

NOW = "2026-12-05T10:00:00Z"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, node_batch_max_bytes=64 * 1024, node_batch_max_records=100)


@dataclass
class Enrolled:
    node_id: str
    credential: str
    key: X25519PrivateKey
    answer: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.credential)

    @property
    def nsk(self) -> bytes:
        return contract.open_node_secret_key(self.answer["node_secret_key"], self.key)


async def enroll_token(api: Api, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/v1/admin/nodes/enrollment-tokens", json=body, headers=api.admin_headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def register(client: httpx.AsyncClient, token: str, hostname: str, **extra: Any) -> httpx.Response:
    key = X25519PrivateKey.generate()
    body = {
        "token": token,
        "public_key": contract.public_key_text(key),
        "hostname": hostname,
        "metadata": {"os": "linux"},
        "capabilities": {"capacity": {"cpu_millis": 4000, "memory_mb": 8192}},
        **extra,
    }
    response = await client.post("/v1/register", json=body)
    response.extensions["node_key"] = key
    return response


async def enrolled(api: Api, hostname: str, **token_body: Any) -> Enrolled:
    token = await enroll_token(api, **token_body)
    response = await register(api.client, token["token"], hostname)
    assert response.status_code == 201, response.text
    answer = response.json()
    return Enrolled(answer["node_id"], answer["credential"], response.extensions["node_key"], answer)


def services_of(app: Litestar) -> AppServices:
    services: AppServices = app.state.services
    return services


def spec(instance_id: str, tenant_id: str, **fields: Any) -> WorkloadSpec:
    return WorkloadSpec(
        instance_id=instance_id,
        tenant_id=tenant_id,
        name="web",
        image="ctrlplane-test/busybox:1",
        resources=Resources(cpu_millis=250, memory_mb=128),
        **fields,
    )


async def read_sse(client: httpx.AsyncClient, url: str, headers: dict[str, str], count: int) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with client.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line:
                if "id" in current:
                    events.append(current)
                    if len(events) == count:
                        break
                current = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            current[field] = value.removeprefix(" ")
    return events


# --- enrolment --------------------------------------------------------------------------


@pytest.mark.dialects("the token is claimed by a conditional UPDATE ... RETURNING under concurrency")
async def test_register_answers_identity_and_the_token_is_single_use(api: Api) -> None:
    token = await enroll_token(api, pool="edge")
    assert token["token"].startswith("cpx_enroll_") and token["state"] == "unused"
    first, second = await asyncio.gather(
        register(api.client, token["token"], "web-01"), register(api.client, token["token"], "web-02")
    )
    assert sorted([first.status_code, second.status_code]) == [201, 401], (first.text, second.text)
    winner = first if first.status_code == 201 else second
    answer = winner.json()
    assert answer["node_id"].startswith("node_") and answer["credential"].startswith("cpx_node_")
    assert answer["peers"] == [] and len(contract.b64decode(answer["signing_public_key"])) == 32
    nsk = contract.open_node_secret_key(answer["node_secret_key"], winner.extensions["node_key"])
    assert len(nsk) == 32
    again = await register(api.client, token["token"], "web-03")
    assert again.status_code == 401 and again.json()["code"] == "unauthenticated"
    listed = (await api.client.get("/v1/admin/nodes/enrollment-tokens", headers=api.admin_headers)).json()
    assert [(t["id"], t["state"], t["node_id"]) for t in listed["items"]] == [(token["id"], "used", answer["node_id"])]
    assert token["token"] not in json.dumps(listed)


async def test_a_ttl_past_the_longest_duration_is_400_and_creates_no_token(api: Api) -> None:
    """Schema-valid (up to seven digits and a unit) yet past a century: found by Schemathesis as a 500."""
    answer = await api.client.post(
        "/v1/admin/nodes/enrollment-tokens", json={"pool": "edge", "ttl": "4233299d"}, headers=api.admin_headers
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_input" and "ttl" in answer.json()["message"]
    listed = (await api.client.get("/v1/admin/nodes/enrollment-tokens", headers=api.admin_headers)).json()
    assert listed["items"] == []


async def test_expired_revoked_and_unknown_tokens_are_401(api: Api, db: Database) -> None:
    expired = await enroll_token(api)
    async with db.write() as session, session.begin():
        await session.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.id == expired["id"])
            .values(expires_at=utc_now() - timedelta(seconds=1))
        )
    revoked = await enroll_token(api)
    response = await api.client.delete(f"/v1/admin/nodes/enrollment-tokens/{revoked['id']}", headers=api.admin_headers)
    assert response.status_code == 204
    for token in (expired["token"], revoked["token"], "cpx_enroll_nope", "plx_enroll_other"):
        response = await register(api.client, token, "web-01")
        assert response.status_code == 401, (token, response.text)
    states = {
        t["id"]: t["state"]
        for t in (await api.client.get("/v1/admin/nodes/enrollment-tokens", headers=api.admin_headers)).json()["items"]
    }
    assert states == {expired["id"]: "expired", revoked["id"]: "revoked"}


async def test_hostname_taken_in_its_scope_is_409_and_leaves_the_token_unused(api: Api) -> None:
    await enrolled(api, "web-01", pool="edge")
    token = await enroll_token(api, pool="edge")
    taken = await register(api.client, token["token"], "WEB-01")
    assert taken.status_code == 409, taken.text
    elsewhere = await enrolled(api, "web-01", pool="core")
    assert elsewhere.node_id
    assert (await register(api.client, token["token"], "web-02")).status_code == 201


async def test_register_refuses_a_malformed_public_key(api: Api) -> None:
    token = await enroll_token(api)
    response = await api.client.post(
        "/v1/register", json={"token": token["token"], "public_key": "A" * 43 + "=", "hostname": "h"}
    )
    assert response.status_code == 400, response.text  # all zeros: a low-order point
    bad = await api.client.post("/v1/register", json={"token": token["token"], "public_key": "x", "hostname": "h"})
    assert bad.status_code == 400


# --- identity and isolation ----------------------------------------------------------------


async def test_a_node_cannot_read_another_nodes_state_secrets_or_events(api: Api, app: Litestar) -> None:
    tenant = await api.create_tenant("acme")
    one, two = await enrolled(api, "one"), await enrolled(api, "two")
    await services_of(app).nodes.assign(one.node_id, spec("inst_a", tenant["id"], env={"K": "v"}))
    for path in ("state", "events", "secrets/inst_a.r1", "heartbeat"):
        method = "POST" if path == "heartbeat" else "GET"
        body = {"node_id": two.node_id, "timestamp": NOW} if method == "POST" else None
        response = await api.client.request(method, f"/v1/nodes/{one.node_id}/{path}", json=body, headers=two.headers)
        assert response.status_code == 404, (path, response.text)
    response = await api.client.get(f"/v1/nodes/{two.node_id}/secrets/inst_a.r1", headers=two.headers)
    assert response.status_code == 403
    assert (await api.client.get(f"/v1/nodes/{two.node_id}/state", headers=two.headers)).json()["workloads"] == []


async def test_node_credentials_and_tenant_credentials_do_not_cross(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    node = await enrolled(api, "one")
    tenant_token = bearer(api.tokens.tenant(tenant["id"]))
    key = await api.create_key(tenant["id"], ["admin"])
    for headers in (tenant_token, api.admin_headers, bearer(key["key"]), {}):
        response = await api.client.get(f"/v1/nodes/{node.node_id}/state", headers=headers)
        assert response.status_code == 401, response.text
    for path in ("/v1/instances", "/v1/keys/self", "/v1/admin/nodes"):
        assert (await api.client.get(path, headers=node.headers)).status_code == 401, path
    tenant_view = await api.client.get("/v1/admin/nodes", headers=tenant_token)
    assert tenant_view.status_code == 403


async def test_deregistered_node_loses_its_credential_and_its_hostname_registers_again(api: Api) -> None:
    node = await enrolled(api, "web-01")
    assert (await api.client.post(f"/v1/nodes/{node.node_id}/deregister", headers=node.headers)).status_code == 200
    assert (await api.client.get(f"/v1/nodes/{node.node_id}/state", headers=node.headers)).status_code == 401
    await enrolled(api, "web-01")


# --- desired state and secrets ---------------------------------------------------------------


async def test_state_is_secret_free_and_the_secret_opens_only_with_the_nodes_key(api: Api, app: Litestar) -> None:
    tenant = await api.create_tenant("acme")
    node = await enrolled(api, "one")
    workload = spec(
        "inst_a",
        tenant["id"],
        env={"DB_PASSWORD": "hunter2-secret"},
        files=(SecretFile(path="/run/secrets/tls", content=b"PRIVATE-KEY-BYTES"),),
    )
    assert await services_of(app).nodes.assign(node.node_id, workload) == 1
    assert await services_of(app).nodes.assign(node.node_id, workload) == 1  # a retried assign changes nothing
    state = await api.client.get(f"/v1/nodes/{node.node_id}/state", headers=node.headers)
    assert state.status_code == 200
    assert "hunter2-secret" not in state.text and "PRIVATE-KEY" not in state.text
    body = msgspec.json.decode(state.content, type=contract.NodeState)
    (placed,) = body.workloads
    assert placed.spec.env == {} and placed.spec.files == () and placed.secret.key == "inst_a.r1"
    assert body.last_event_id == 1 and body.signing_keys.previous is None

    response = await api.client.get(f"/v1/nodes/{node.node_id}/secrets/{placed.secret.key}", headers=node.headers)
    assert response.status_code == 200 and "hunter2" not in response.text
    encrypted = msgspec.json.decode(response.content, type=contract.EncryptedSecret)
    merged = contract.merge_secrets(placed.spec, contract.decrypt_secret(node.nsk, encrypted, node_id=node.node_id))
    assert merged == workload
    with pytest.raises(contract.ContractError):
        contract.open_node_secret_key(node.answer["node_secret_key"], X25519PrivateKey.generate())
    missing = await api.client.get(f"/v1/nodes/{node.node_id}/secrets/inst_a.r9", headers=node.headers)
    assert missing.status_code == 404


async def test_assignment_revisions_only_grow_and_a_secret_change_is_announced_alone(api: Api, app: Litestar) -> None:
    tenant, other = await api.create_tenant("acme"), await api.create_tenant("other")
    node = await enrolled(api, "one")
    mine = await enrolled(api, "mine", tenant_id=tenant["id"])
    nodes = services_of(app).nodes
    assert await nodes.assign(node.node_id, spec("inst_a", tenant["id"], env={"K": "1"})) == 1
    assert await nodes.assign(node.node_id, spec("inst_a", tenant["id"], env={"K": "2"})) == 2
    assert await nodes.update(node.node_id, spec("inst_a", tenant["id"], env={"K": "2"}, replicas=2)) == 4
    await nodes.remove(node.node_id, "inst_a")
    assert await nodes.assign(node.node_id, spec("inst_a", tenant["id"])) == 6
    page = (await api.client.get(f"/v1/nodes/{node.node_id}/events", headers=node.headers)).json()
    kinds = [(item["event_id"], item["type"]) for item in page["items"]]
    assert kinds == [
        (1, "workload_assigned"),
        (2, "workload_updated"),
        (3, "node_secrets_updated"),
        (4, "workload_updated"),
        (5, "workload_removed"),
        (6, "workload_assigned"),
    ]
    assert page["items"][2]["payload"] == {"secrets": [{"key": "inst_a.r2", "version": 2}]}
    with pytest.raises(Conflict):
        await nodes.assign(mine.node_id, spec("inst_b", other["id"]))  # a tenant's node runs only its own
    response = await api.client.post(f"/v1/admin/nodes/{mine.node_id}/cordon", headers=api.admin_headers)
    assert response.status_code == 200
    with pytest.raises(Conflict):
        await nodes.assign(mine.node_id, spec("inst_b", tenant["id"]))


async def test_report_feeds_reported_status_and_an_older_version_is_409(api: Api, app: Litestar) -> None:
    tenant = await api.create_tenant("acme")
    node = await enrolled(api, "one")
    nodes = services_of(app).nodes
    await nodes.assign(node.node_id, spec("inst_a", tenant["id"]))
    status = {"instance_id": "inst_a", "state": "running", "message": "", "replicas": []}
    entry = {"key": "instance/inst_a", "payload": status, "version": 2, "updated_at": NOW}
    stray = {**entry, "key": "instance/inst_elsewhere"}
    url = f"/v1/nodes/{node.node_id}/report"
    assert (await api.client.post(url, json={"entries": [entry, stray]}, headers=node.headers)).status_code == 200
    reported = await nodes.reported_status("inst_a")
    assert reported is not None and reported.state == "running"
    older = {**entry, "version": 1, "payload": {**status, "state": "failed"}}
    response = await api.client.post(url, json={"entries": [older]}, headers=node.headers)
    assert response.status_code == 409
    assert (await nodes.reported_status("inst_a")).state == "running"  # type: ignore[union-attr]


# --- events ------------------------------------------------------------------------------------


@pytest.mark.dialects("node event numbers come from an UPDATE ... RETURNING on the node row")
async def test_events_are_signed_and_replay_after_last_event_id_without_duplicates(live: Api, app: Litestar) -> None:
    tenant = await live.create_tenant("acme")
    node = await enrolled(live, "one")
    nodes = services_of(app).nodes
    for name in ("inst_a", "inst_b"):
        await nodes.assign(node.node_id, spec(name, tenant["id"]))
    await nodes.remove(node.node_id, "inst_a")
    url = f"/v1/nodes/{node.node_id}/events"
    first = await asyncio.wait_for(read_sse(live.client, url, node.headers, 3), timeout=10)
    assert [(e["id"], e["event"]) for e in first] == [
        ("1", "workload_assigned"),
        ("2", "workload_assigned"),
        ("3", "workload_removed"),
    ]
    published = [node.answer["signing_public_key"]]
    envelopes = [msgspec.json.decode(e["data"], type=contract.Envelope) for e in first]
    for envelope in envelopes:
        contract.verify_envelope(envelope, published)
    assigned = contract.decode_payload(envelopes[0])
    assert isinstance(assigned, contract.WorkloadAssigned) and assigned.workload.instance_id == "inst_a"
    tampered = msgspec.structs.replace(envelopes[2], payload={**envelopes[2].payload, "instance_id": "inst_b"})
    with pytest.raises(contract.ContractError):
        contract.verify_envelope(tampered, published)

    async def resumed() -> list[dict[str, str]]:
        return await read_sse(live.client, url, {**node.headers, "Last-Event-ID": "1"}, 3)

    reader = asyncio.create_task(asyncio.wait_for(resumed(), timeout=10))
    await nodes.assign(node.node_id, spec("inst_c", tenant["id"]))  # live, after the replay
    again = await reader
    assert [e["id"] for e in again] == ["2", "3", "4"]
    assert again[:2] == first[1:]  # the same envelopes: Ed25519 signatures are deterministic
    live_event = msgspec.json.decode(again[2]["data"], type=contract.Envelope)
    contract.verify_envelope(live_event, published)


async def test_signing_key_rotation_keeps_the_previous_key_for_the_transition(api: Api) -> None:
    node = await enrolled(api, "one")
    old = node.answer["signing_public_key"]
    response = await api.client.post("/v1/admin/nodes/signing-keys/rotate", headers=api.admin_headers)
    assert response.status_code == 200, response.text
    state = (await api.client.get(f"/v1/nodes/{node.node_id}/state", headers=node.headers)).json()
    keys = state["signing_keys"]
    assert keys["previous"] == old and keys["current"] != old and keys["transition_expires"]
    assert state["last_event_id"] == 1


async def test_node_key_rotation_replaces_credential_and_nsk(api: Api) -> None:
    node = await enrolled(api, "one")
    response = await api.client.post(f"/v1/admin/nodes/{node.node_id}/rotate-keys", headers=api.admin_headers)
    assert response.status_code == 200
    beat = {"node_id": node.node_id, "timestamp": NOW}
    answer = await api.client.post(f"/v1/nodes/{node.node_id}/heartbeat", json=beat, headers=node.headers)
    assert answer.json() == {"rotate_keys": True}
    new_key = X25519PrivateKey.generate()
    body = {"node_id": node.node_id, "new_public_key": contract.public_key_text(new_key)}
    rotated = await api.client.post("/v1/keys/rotate", json=body, headers=node.headers)
    assert rotated.status_code == 200, rotated.text
    fresh = rotated.json()
    assert fresh["updated_peers"] == []
    assert len(contract.open_node_secret_key(fresh["node_secret_key"], new_key)) == 32
    assert (await api.client.get(f"/v1/nodes/{node.node_id}/state", headers=node.headers)).status_code == 401
    ok = await api.client.post(f"/v1/nodes/{node.node_id}/heartbeat", json=beat, headers=bearer(fresh["credential"]))
    assert ok.status_code == 200 and ok.json() == {}


# --- telemetry --------------------------------------------------------------------------------


def gzipped(lines: list[dict[str, Any]], *, ndjson: bool = True) -> bytes:
    if ndjson:
        return gzip.compress(b"\n".join(json.dumps(line).encode() for line in lines))
    return gzip.compress(json.dumps(lines).encode())


async def test_gzip_batches_land_in_the_instances_logs_and_metrics(api: Api, app: Litestar) -> None:
    tenant = await api.create_tenant("acme", plan="pro")
    headers = bearer(api.tokens.tenant(tenant["id"]))
    created = await api.client.post(
        "/v1/instances", json={"name": "web", "image": "ctrlplane-test/busybox:1"}, headers=headers
    )
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    node = await enrolled(api, "one")
    nodes = services_of(app).nodes
    await nodes.assign(node.node_id, spec(instance_id, tenant["id"]))
    gz = {**node.headers, "Content-Encoding": "gzip"}
    taken = utc_now().replace(microsecond=0).isoformat().replace("+00:00", "Z")
    logs = [
        {"timestamp": taken, "message": "hello from the node", "instance_id": instance_id, "source": "stdout"},
        {"timestamp": taken, "message": "stray", "instance_id": "inst_not_here"},
        {"timestamp": taken, "message": "node log", "source": "journald", "unit": "ctrlplane-agent"},
    ]
    response = await api.client.post(
        f"/v1/nodes/{node.node_id}/logs",
        content=gzipped(logs),
        headers={**gz, "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "rejected": 1}
    assert [line.message for line in await nodes.logs(instance_id)] == ["hello from the node"]

    metrics = [
        {
            "timestamp": taken,
            "group": "instance",
            "instance_id": instance_id,
            "data": {"cpu_percent": 42.5, "memory_used": 1000, "memory_total": 2000},
        },
        {"timestamp": taken, "group": "node_resources", "data": {"cpu_percent": 3.0}},
    ]
    response = await api.client.post(
        f"/v1/nodes/{node.node_id}/metrics",
        content=gzipped(metrics, ndjson=False),
        headers={**gz, "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    shown = await api.client.get(f"/v1/instances/{instance_id}/metrics", headers=headers)
    assert shown.status_code == 200 and "42.5" in shown.text, shown.text


async def test_an_instances_lines_shipped_by_its_node_are_stored_redacted(
    api: Api, app: Litestar, db: Database, settings: Settings
) -> None:
    """Issue 16, item 6: the node_log_lines table never holds an instance's secret values or OTLP
    token (exact or base64), so neither ``GET .../logs`` nor the database shows them."""
    tenant = await api.create_tenant("acme", plan="pro")
    headers = bearer(api.tokens.tenant(tenant["id"]))
    created = await api.client.post(
        "/v1/instances", json={"name": "web", "image": "ctrlplane-test/busybox:1"}, headers=headers
    )
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    secret = "sv-1b7f0e42-shipped-by-a-node"
    put = await api.client.post(
        f"/v1/instances/{instance_id}/secrets", json={"key": "DB_PASSWORD", "value": secret}, headers=headers
    )
    assert put.status_code == 201, put.text
    node = await enrolled(api, "one")
    await services_of(app).nodes.assign(node.node_id, spec(instance_id, tenant["id"]))
    encoded = base64.b64encode(secret.encode()).decode()
    otlp = instance_token(settings, instance_id)
    taken = utc_now().replace(microsecond=0).isoformat().replace("+00:00", "Z")
    logs = [
        {"timestamp": taken, "message": f"password={secret} b64={encoded}", "instance_id": instance_id},
        {"timestamp": taken, "message": f"Bearer {otlp}", "instance_id": instance_id},
    ]
    response = await api.client.post(
        f"/v1/nodes/{node.node_id}/logs",
        content=gzipped(logs),
        headers={**node.headers, "Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    async with db.read() as session:
        stored = list((await session.execute(select(NodeLogLine.message).order_by(NodeLogLine.id))).scalars())
    assert stored == ["password=[redacted] b64=[redacted]", "Bearer [redacted]"]


async def test_oversized_or_malformed_batches_are_refused(api: Api) -> None:
    node = await enrolled(api, "one")
    url = f"/v1/nodes/{node.node_id}/logs"
    gz = {**node.headers, "Content-Encoding": "gzip"}
    huge = gzip.compress(b'{"timestamp": "2026-12-05T10:00:00Z", "message": "' + b"x" * 200_000 + b'"}')
    assert len(huge) < 64 * 1024
    assert (await api.client.post(url, content=huge, headers=gz)).status_code == 413
    many = gzipped([{"timestamp": NOW, "message": "m"}] * 101)
    assert (await api.client.post(url, content=many, headers=gz)).status_code == 413
    assert (await api.client.post(url, content=b"not gzip", headers=gz)).status_code == 400
    assert (await api.client.post(url, content=gzipped([{"message": 1}]), headers=gz)).status_code == 400


# --- admin ---------------------------------------------------------------------------------------


async def test_heartbeat_timeout_marks_the_node_unreachable_until_it_beats_again(
    api: Api, app: Litestar, db: Database
) -> None:
    tenant = await api.create_tenant("acme")
    node = await enrolled(api, "one")
    services = services_of(app)
    await services.nodes.assign(node.node_id, spec("inst_a", tenant["id"]))
    monitor = NodeMonitor(services)
    assert await monitor.run_once() == []
    async with db.write() as session, session.begin():
        stale = utc_now() - timedelta(seconds=services.settings.node_heartbeat_timeout_seconds + 1)
        await session.execute(update(Node).where(Node.id == node.node_id).values(last_heartbeat_at=stale))
    assert await monitor.run_once() == [node.node_id]
    view = (await api.client.get(f"/v1/admin/nodes/{node.node_id}", headers=api.admin_headers)).json()
    assert view["state"] == "unreachable"
    placement = await services.nodes.placement("inst_a")
    assert placement is not None and placement.node_state == "unreachable"
    beat = {"node_id": node.node_id, "timestamp": NOW}
    answer = await api.client.post(f"/v1/nodes/{node.node_id}/heartbeat", json=beat, headers=node.headers)
    assert answer.json() == {"reconcile": True}
    assert (await services.nodes.placement("inst_a")).node_state == "ready"  # type: ignore[union-attr]


async def test_admin_lists_nodes_and_cordons_drains_uncordons(api: Api, app: Litestar) -> None:
    tenant = await api.create_tenant("acme")
    node = await enrolled(api, "one", pool="edge")
    await services_of(app).nodes.assign(node.node_id, spec("inst_a", tenant["id"], replicas=2))
    listed = (await api.client.get("/v1/admin/nodes", headers=api.admin_headers)).json()
    (view,) = listed["items"]
    assert view["state"] == "ready" and view["pool"] == "edge" and view["last_heartbeat_at"]
    assert view["capacity"] == {"cpu_millis": 4000, "memory_mb": 8192, "used_cpu_millis": 500, "used_memory_mb": 256}
    assert [i["instance_id"] for i in view["instances"]] == ["inst_a"]
    assert "credential" not in json.dumps(listed).replace("credential_expires_at", "")
    for action, state in (("cordon", "cordoned"), ("drain", "draining"), ("uncordon", "ready")):
        response = await api.client.post(f"/v1/admin/nodes/{node.node_id}/{action}", headers=api.admin_headers)
        assert response.status_code == 200 and response.json()["state"] == state, response.text
    candidates = await services_of(app).nodes.candidates("edge", tenant["id"])
    assert [c.node_id for c in candidates] == [node.node_id]


async def test_actions_round_trip_and_every_node_call_is_audited(api: Api) -> None:
    node = await enrolled(api, "one")
    created = await api.client.post(
        f"/v1/admin/nodes/{node.node_id}/actions", json={"action": "restart"}, headers=api.admin_headers
    )
    assert created.status_code == 201, created.text
    execution_id = created.json()["id"]
    base = f"/v1/nodes/{node.node_id}/executions/{execution_id}"
    ack = {"execution_id": execution_id, "status": "accepted"}
    assert (await api.client.post(f"{base}/ack", json=ack, headers=node.headers)).status_code == 200
    result = {"execution_id": execution_id, "status": "success", "exit_code": 0, "finished_at": NOW}
    assert (await api.client.post(f"{base}/result", json=result, headers=node.headers)).status_code == 200
    shown = (
        await api.client.get(f"/v1/admin/nodes/{node.node_id}/executions/{execution_id}", headers=api.admin_headers)
    ).json()
    assert shown["status"] == "success" and shown["result"]["exit_code"] == 0
    audit = await api.client.get("/v1/admin/audit", params={"resource": "node"}, headers=api.admin_headers)
    actions = {(e["action"], e["actor_subject"], e["tenant_id"]) for e in audit.json()["items"]}
    assert {("register", node.node_id, None), ("execution_ack", node.node_id, None)} <= actions
    assert ("execution_result", node.node_id, None) in actions


async def test_an_admin_cannot_send_the_nodes_providers_own_actions(api: Api) -> None:
    """``ctrlplane.instance.exec`` runs a command in a tenant's container: only the nodes provider
    (a health check, a gate) sends it, never the admin API."""
    node = await enrolled(api, "one")
    for action in ("ctrlplane.instance.exec", "ctrlplane.instance.restart"):
        refused = await api.client.post(
            f"/v1/admin/nodes/{node.node_id}/actions",
            json={"action": action, "parameters": {"instance_id": "inst_x"}},
            headers=api.admin_headers,
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "invalid_input" and refused.json()["request_id"]


async def test_capabilities_update_the_capacity_and_drift_is_kept_in_the_audit_log(api: Api) -> None:
    node = await enrolled(api, "one")
    body = {"binary": {"version": "2"}, "capacity": {"cpu_millis": 1000, "memory_mb": 512}}
    response = await api.client.put(f"/v1/nodes/{node.node_id}/capabilities", json=body, headers=node.headers)
    assert response.status_code == 200, response.text
    view = (await api.client.get(f"/v1/admin/nodes/{node.node_id}", headers=api.admin_headers)).json()
    assert view["capacity"]["cpu_millis"] == 1000 and view["capacity"]["memory_mb"] == 512
    drift = {"timestamp": NOW, "corrections": [{"type": "container_restarted", "detail": "web-0 was gone"}]}
    response = await api.client.post(f"/v1/nodes/{node.node_id}/drift", json=drift, headers=node.headers)
    assert response.status_code == 200, response.text
    audit = await api.client.get(
        "/v1/admin/audit", params={"resource": "node", "action": "drift"}, headers=api.admin_headers
    )
    (entry,) = audit.json()["items"]
    assert entry["details"]["corrections"][0]["detail"] == "web-0 was gone" and entry["tenant_id"] is None


async def test_a_batch_from_a_stranger_is_401_before_its_body_is_read(api: Api) -> None:
    node = await enrolled(api, "one")
    for kind in ("metrics", "logs", "audit"):
        path = f"/v1/nodes/{node.node_id}/{kind}"
        stranger = await api.client.post(path, json=[{}])  # no credential, and an invalid record
        assert stranger.status_code == 401, (kind, stranger.text)
        invalid = await api.client.post(path, json=[{}], headers=node.headers)
        assert invalid.status_code == 400, (kind, invalid.text)
        assert invalid.json()["code"] == "invalid_input"
