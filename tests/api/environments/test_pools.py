"""Warm pools (fake provider): a claim takes a ready instance (no container start), the pool
refills to min_ready, an empty pool answers 503 + Retry-After when a cold start is not allowed or
the tenant is at quota."""

from __future__ import annotations

from typing import Any

import pytest

from ctrlplane.audit.service import verify
from ctrlplane.db import Database
from ctrlplane.settings import Settings
from tests.api.environments.helpers import ready_members, tenant
from tests.api.test_audit import audit_keys
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider
from tests.waiting import eventually

POOLED = {
    "name": "sandbox",
    "spec": {"image": "ctrlplane-test/busybox:1", "ports": [{"container_port": 8080}], "env": {"SIZE": "{{size}}"}},
    "parameters": [{"name": "size", "type": "enum", "values": ["s", "m"], "default": "s"}],
}


async def pooled(api: Api, token: dict[str, str], **pool: Any) -> dict[str, Any]:
    response = await api.client.post("/v1/templates", json={**POOLED, "pool": pool}, headers=token)
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.mark.dialects("the pool claim takes a row with SKIP LOCKED")
async def test_claim_takes_a_ready_instance_without_a_container_start_and_the_pool_refills(
    live: Api, fake: FakeProvider
) -> None:
    _, token = await tenant(live)
    await pooled(live, token, min_ready=2, max_ready=3)
    members = await ready_members(live, token, 2)
    assert all(m["owner"] == "pool" and m["url"] is None for m in members)
    listed = (await live.client.get("/v1/environments", headers=token)).json()["items"]
    assert listed == []
    response = await live.client.post(
        "/v1/environments", json={"key": "user-1", "template": "sandbox", "ttl": "1h"}, headers=token
    )
    assert response.status_code == 201, response.text
    claimed = response.json()
    assert claimed["id"] in {m["id"] for m in members}
    assert claimed["instance_state"] == "running"
    assert claimed["key"] == "user-1" and claimed["owner"] == "alice" and claimed["state"] == "active"
    assert claimed["expires_at"] is not None
    assert fake.calls.count(("provision", claimed["instance_id"])) == 1
    again = await live.client.post("/v1/environments", json={"key": "user-1", "template": "sandbox"}, headers=token)
    assert again.status_code == 200 and again.json()["id"] == claimed["id"]
    refilled = await ready_members(live, token, 2)
    stats = (await live.client.get("/v1/admin/stats", headers=live.admin_headers)).json()
    assert stats["environments"]["pooled"] >= 2
    assert stats["environments"]["active"] == 1
    assert claimed["id"] not in {m["id"] for m in refilled}
    events = (await live.client.get("/v1/events", params={"limit": 100}, headers=token)).json()["items"]
    assert "environment.claimed" in [e["type"] for e in events if e["data"].get("environment_id") == claimed["id"]]
    cold = await live.client.post(
        "/v1/environments", json={"key": "user-2", "template": "sandbox", "parameters": {"size": "m"}}, headers=token
    )
    assert cold.status_code == 201
    assert cold.json()["id"] not in {m["id"] for m in refilled}


async def test_empty_pool_without_cold_start_is_503_with_retry_after(api: Api) -> None:
    _, token = await tenant(api)
    await pooled(api, token, min_ready=1, max_ready=1, cold_start=False)
    # no background runs behind this client: the pool is never filled
    response = await api.client.post("/v1/environments", json={"key": "k", "template": "sandbox"}, headers=token)
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    assert response.json()["details"]["pool"] == "empty"
    assert (await api.client.get("/v1/instances", headers=token)).json()["items"] == []


async def test_empty_pool_at_the_tenants_quota_is_503_with_retry_after(api: Api) -> None:
    created = await api.create_tenant("tiny", plan="free")
    token = bearer(api.tokens.tenant(created["id"]))
    await pooled(api, token, min_ready=1, max_ready=1)
    for index in range(3):
        response = await api.client.post(
            "/v1/instances", json={"name": f"web{index}", "image": "ctrlplane-test/busybox:1"}, headers=token
        )
        assert response.status_code == 201, response.text
    response = await api.client.post("/v1/environments", json={"key": "k", "template": "sandbox"}, headers=token)
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    assert response.json()["details"]["quota"] == "max_instances"


async def test_pooled_template_needs_defaults_and_a_tenant(api: Api) -> None:
    _, token = await tenant(api)
    body = {**POOLED, "parameters": [{"name": "size", "type": "string", "required": True}], "pool": {"max_ready": 1}}
    response = await api.client.post("/v1/templates", json=body, headers=token)
    assert response.status_code == 400
    assert response.json()["details"]["pool"] == {"size": "required without a default"}
    system = await api.client.post(
        "/v1/templates", json={**POOLED, "pool": {"max_ready": 1}}, headers=api.admin_headers
    )
    assert system.status_code == 400


async def test_pool_members_carry_the_templates_health_checks_and_routes(live: Api) -> None:
    _, token = await tenant(live)
    spec = {
        **POOLED["spec"],
        "health_checks": [{"name": "ready", "type": "http", "target": "http://localhost:8080/{{size}}"}],
        "routes": [{"path": "/size-{{size}}", "port": 8080}],
    }
    response = await live.client.post(
        "/v1/templates", json={**POOLED, "spec": spec, "pool": {"min_ready": 1, "max_ready": 1}}, headers=token
    )
    assert response.status_code == 201, response.text
    (member,) = await ready_members(live, token, 1)
    instance_id = member["instance_id"]
    checks = (await live.client.get(f"/v1/instances/{instance_id}/health/checks", headers=token)).json()["items"]
    assert [c["target"] for c in checks] == ["http://localhost:8080/s"]
    routes = (await live.client.get(f"/v1/instances/{instance_id}/routes", headers=token)).json()["items"]
    assert [r["path"] for r in routes] == ["/size-s"]
    claimed = await live.client.post("/v1/environments", json={"key": "user-1", "template": "sandbox"}, headers=token)
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["instance_id"] == instance_id


@pytest.mark.dialects("the keeper's pool pass locks rows with SKIP LOCKED and appends to the chain under its lock")
async def test_pool_refills_retires_and_settles_are_audited_as_the_system_and_the_chain_verifies(
    live: Api, db: Database, settings: Settings
) -> None:
    _, token = await tenant(live)
    made = await pooled(live, token, min_ready=1, max_ready=1)
    (first,) = await ready_members(live, token, 1)
    patched = await live.client.patch(f"/v1/templates/{made['id']}", json={"description": "v2"}, headers=token)
    assert patched.status_code == 200, patched.text

    async def system_entries() -> list[dict[str, Any]]:
        entries = (
            await live.client.get(
                "/v1/admin/audit", params={"resource": "environment", "limit": 100}, headers=live.admin_headers
            )
        ).json()["items"]
        return [e for e in entries if e["actor_kind"] == "system"]

    def actions_for(entries: list[dict[str, Any]], environment_id: str) -> set[str]:
        return {e["action"] for e in entries if e["resource_id"] == environment_id}

    async def retired_and_settled() -> bool:
        return {"pool_refill", "pool_retire", "settle"} <= actions_for(await system_entries(), first["id"])

    await eventually(retired_and_settled, "the first member's refill, retire and settle entries", timeout=30)
    entries = await system_entries()
    refill = next(e for e in entries if e["resource_id"] == first["id"] and e["action"] == "pool_refill")
    assert refill["actor_subject"] == "ctrlplane"
    assert refill["details"]["template_id"] == made["id"] and refill["details"]["template_version"] == 1
    assert refill["details"]["instance_id"] == first["instance_id"]
    (second,) = await ready_members(live, token, 1)
    assert "pool_refill" in actions_for(await system_entries(), second["id"])
    async with db.read() as session:
        report = await verify(session, audit_keys(settings))
    assert report.broken is None, report.broken
