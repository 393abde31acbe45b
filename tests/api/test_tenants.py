from __future__ import annotations

import pytest

from tests.conftest import Api, bearer

QUOTA = {
    "max_instances": 7,
    "max_cpu_millis": 3000,
    "max_memory_mb": 4096,
    "max_domains": 1,
    "max_routes": 5,
    "max_secrets": 9,
}


async def test_create_tenant_returns_it_with_rfc3339_times(api: Api) -> None:
    tenant = await api.create_tenant("acme", plan="pro", name="Acme Corp")
    assert tenant["name"] == "Acme Corp"
    assert tenant["status"] == "active"
    assert tenant["created_at"].endswith("Z")
    fetched = await api.client.get(f"/v1/admin/tenants/{tenant['id']}", headers=api.admin_headers)
    assert fetched.status_code == 200
    assert fetched.json() == tenant


async def test_duplicate_slug_is_409(api: Api) -> None:
    await api.create_tenant("acme")
    response = await api.client.post(
        "/v1/admin/tenants", json={"name": "Other", "slug": "acme"}, headers=api.admin_headers
    )
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"


async def test_unknown_plan_is_400_listing_plans(api: Api) -> None:
    response = await api.client.post(
        "/v1/admin/tenants", json={"name": "A", "slug": "a", "plan": "platinum"}, headers=api.admin_headers
    )
    assert response.status_code == 400
    assert "free" in response.json()["message"]


async def test_invalid_slug_is_400_with_field_details(api: Api) -> None:
    response = await api.client.post(
        "/v1/admin/tenants", json={"name": "A", "slug": "Not A Slug!"}, headers=api.admin_headers
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_input"
    assert "slug" in body["message"]


async def test_patch_changes_only_present_fields(api: Api) -> None:
    tenant = await api.create_tenant("acme", plan="free", name="Acme")
    response = await api.client.patch(
        f"/v1/admin/tenants/{tenant['id']}", json={"name": "Acme Two"}, headers=api.admin_headers
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Acme Two"
    assert response.json()["plan"] == "free"


async def test_plan_change_resets_quota_to_plan_defaults(api: Api) -> None:
    tenant = await api.create_tenant("acme", plan="free")
    path = f"/v1/admin/tenants/{tenant['id']}"
    put = await api.client.put(f"{path}/quota", json=QUOTA, headers=api.admin_headers)
    assert put.status_code == 200
    assert put.json()["custom"] is True
    await api.client.patch(path, json={"plan": "pro"}, headers=api.admin_headers)
    quota = (await api.client.get(f"{path}/quota", headers=api.admin_headers)).json()
    assert quota["plan"] == "pro"
    assert quota["custom"] is False
    assert quota["limits"]["max_instances"] == 20


async def test_quota_put_then_get_returns_limits_and_usage(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    path = f"/v1/admin/tenants/{tenant['id']}/quota"
    assert (await api.client.put(path, json=QUOTA, headers=api.admin_headers)).status_code == 200
    quota = (await api.client.get(path, headers=api.admin_headers)).json()
    assert quota["limits"] == {**QUOTA, "max_environments_per_owner": None}
    assert set(quota["usage"]) == {"instances", "cpu_millis", "memory_mb", "domains", "routes", "secrets"}


async def test_quota_put_needs_every_field(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    partial = {k: v for k, v in QUOTA.items() if k != "max_routes"}
    response = await api.client.put(f"/v1/admin/tenants/{tenant['id']}/quota", json=partial, headers=api.admin_headers)
    assert response.status_code == 400
    assert "max_routes" in response.json()["message"]


async def test_negative_quota_is_400(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    response = await api.client.put(
        f"/v1/admin/tenants/{tenant['id']}/quota", json={**QUOTA, "max_instances": -1}, headers=api.admin_headers
    )
    assert response.status_code == 400


async def test_suspended_tenant_can_read_but_not_mutate(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"]))
    response = await api.client.post(
        f"/v1/admin/tenants/{tenant['id']}/suspend", json={"reason": "payment overdue"}, headers=api.admin_headers
    )
    assert response.status_code == 200
    assert response.json()["status"] == "suspended"
    assert response.json()["suspension_reason"] == "payment overdue"

    denied = await api.client.post("/v1/keys", json={"name": "ci", "roles": ["read"]}, headers=token)
    assert denied.status_code == 403
    assert denied.json()["code"] == "tenant_suspended"
    assert (await api.client.get("/v1/keys", headers=token)).status_code == 200

    lifted = await api.client.post(
        f"/v1/admin/tenants/{tenant['id']}/unsuspend", json={"reason": "paid"}, headers=api.admin_headers
    )
    assert lifted.json()["status"] == "active"
    allowed = await api.client.post("/v1/keys", json={"name": "ci", "roles": ["read"]}, headers=token)
    assert allowed.status_code == 201


async def test_suspend_twice_is_409_naming_state(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    path = f"/v1/admin/tenants/{tenant['id']}/suspend"
    await api.client.post(path, json={"reason": "x"}, headers=api.admin_headers)
    again = await api.client.post(path, json={"reason": "x"}, headers=api.admin_headers)
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_state"


async def test_suspension_reason_is_recorded_in_audit(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    await api.client.post(
        f"/v1/admin/tenants/{tenant['id']}/suspend", json={"reason": "abuse report"}, headers=api.admin_headers
    )
    entries = (
        await api.client.get(
            "/v1/admin/audit", params={"tenant_id": tenant["id"], "action": "suspend"}, headers=api.admin_headers
        )
    ).json()["items"]
    assert [e["details"]["reason"] for e in entries] == ["abuse report"]


async def test_delete_tenant_removes_it_and_its_keys(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    key = await api.create_key(tenant["id"], ["read"])
    response = await api.client.delete(f"/v1/admin/tenants/{tenant['id']}", headers=api.admin_headers)
    assert response.status_code == 204
    assert (await api.client.get(f"/v1/admin/tenants/{tenant['id']}", headers=api.admin_headers)).status_code == 404
    assert (await api.client.get("/v1/keys/self", headers=bearer(key["key"]))).status_code == 401
    assert (await api.client.get("/v1/keys/self", headers=bearer(api.tokens.tenant(tenant["id"])))).status_code == 401


async def test_unknown_tenant_is_404(api: Api) -> None:
    response = await api.client.get("/v1/admin/tenants/ten_01h455vb4pex5vsknk084sn02q", headers=api.admin_headers)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.dialects("keyset pagination compares ID strings (bytes on SQLite, a collation on PostgreSQL)")
async def test_list_pages_are_stable_while_rows_are_inserted(api: Api) -> None:
    for i in range(5):
        await api.create_tenant(f"t{i}")
    first = (await api.client.get("/v1/admin/tenants", params={"limit": 2}, headers=api.admin_headers)).json()
    assert [t["slug"] for t in first["items"]] == ["t4", "t3"]
    assert first["total"] == 5
    await api.create_tenant("late")
    second = (
        await api.client.get(
            "/v1/admin/tenants", params={"limit": 2, "cursor": first["next_cursor"]}, headers=api.admin_headers
        )
    ).json()
    assert [t["slug"] for t in second["items"]] == ["t2", "t1"]
    third = (
        await api.client.get(
            "/v1/admin/tenants", params={"limit": 2, "cursor": second["next_cursor"]}, headers=api.admin_headers
        )
    ).json()
    assert [t["slug"] for t in third["items"]] == ["t0"]
    assert third["next_cursor"] is None


async def test_list_filters_by_status(api: Api) -> None:
    a = await api.create_tenant("a")
    await api.create_tenant("b")
    await api.client.post(f"/v1/admin/tenants/{a['id']}/suspend", json={"reason": "x"}, headers=api.admin_headers)
    listed = (
        await api.client.get("/v1/admin/tenants", params={"status": "suspended"}, headers=api.admin_headers)
    ).json()
    assert [t["slug"] for t in listed["items"]] == ["a"]


async def test_stats_count_tenants_and_keys(api: Api) -> None:
    a = await api.create_tenant("a")
    b = await api.create_tenant("b")
    await api.create_key(b["id"], ["read"])
    revoked = await api.create_key(b["id"], ["read"])
    await api.client.delete(f"/v1/keys/{revoked['id']}", headers=bearer(api.tokens.tenant(b["id"])))
    await api.client.post(f"/v1/admin/tenants/{a['id']}/suspend", json={"reason": "x"}, headers=api.admin_headers)
    stats = (await api.client.get("/v1/admin/stats", headers=api.admin_headers)).json()
    assert stats["tenants"] == {"active": 1, "suspended": 1}
    assert stats["api_keys"] == {"active": 1, "revoked": 1, "expired": 0}


async def test_providers_report_whether_each_answers(api: Api) -> None:
    response = await api.client.get("/v1/admin/providers", headers=api.admin_headers)
    assert response.status_code == 200
    assert response.json()["items"] == [{"name": "fake", "available": True, "message": "fake provider"}]
