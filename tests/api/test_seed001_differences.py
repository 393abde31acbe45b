"""Seed 001's last differences (issue 16, item 11): a PATCH that changes nothing, and refused
admin actions recorded in the tenant's own audit chain. (A scale before a deploy that goes back:
test_deployments.py.)"""

from __future__ import annotations

from typing import Any

from tests.api.test_instances import create, tenant_token
from tests.conftest import Api


async def test_a_patch_that_changes_nothing_keeps_the_version_the_etag_and_the_releases(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    path = f"/v1/instances/{instance['id']}"
    before = await api.client.get(path, headers=token)
    same = {"env": instance["env"], "labels": instance["labels"], "resources": instance["resources"]}
    patched = await api.client.patch(path, json=same, headers={**token, "If-Match": before.headers["etag"]})
    assert patched.status_code == 200, patched.text
    assert patched.headers["etag"] == before.headers["etag"]
    assert patched.json()["version"] == before.json()["version"]
    releases = (await api.client.get(f"{path}/releases", headers=token)).json()
    assert releases["total"] == 1


async def audit_of(api: Api, tenant_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(
        "/v1/admin/audit", params={"tenant_id": tenant_id, "limit": 100}, headers=api.admin_headers
    )
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_refused_admin_actions_on_a_tenant_are_in_its_audit_chain(api: Api) -> None:
    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    tenant_path = f"/v1/admin/tenants/{tenant_id}"
    assert (await api.client.post(f"{tenant_path}/unsuspend", headers=api.admin_headers)).status_code == 409
    stale = await api.client.patch(
        tenant_path, json={"name": "Renamed"}, headers={**api.admin_headers, "If-Match": '"999"'}
    )
    assert stale.status_code == 412
    refused = await api.client.post(f"/v1/instances/{instance['id']}/unsuspend", headers=api.admin_headers)
    assert refused.status_code == 409, refused.text
    entries = {(e["resource"], e["action"], e["status_code"], e["outcome"]) for e in await audit_of(api, tenant_id)}
    assert ("tenant", "unsuspend", 409, "rejected") in entries
    assert ("tenant", "update", 412, "rejected") in entries
    assert ("instance", "unsuspend", 409, "rejected") in entries
    verified = await api.client.get("/v1/admin/audit", params={"tenant_id": tenant_id}, headers=api.admin_headers)
    assert verified.status_code == 200
