from __future__ import annotations

from tests.conftest import Api, bearer


async def test_admin_creates_tenant_and_it_is_listed(api: Api) -> None:
    tenant = await api.create_tenant("acme", plan="pro")
    assert tenant["id"].startswith("ten_")
    response = await api.client.get("/v1/admin/tenants", headers=api.admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 1
    assert [t["slug"] for t in body["items"]] == ["acme"]


async def test_tenant_token_sees_itself(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    response = await api.client.get("/v1/keys/self", headers=bearer(api.tokens.tenant(tenant["id"])))
    assert response.status_code == 200, response.text
    assert response.json()["tenant_id"] == tenant["id"]
