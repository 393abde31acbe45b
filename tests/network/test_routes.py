"""Routes through the API (validation, tenant isolation, quotas) and through a real Caddy in front
of real containers (strip_prefix, same-path weights, deletion)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_instances import create, tenant_token
from tests.conftest import Api

WEB = {
    "name": "web",
    "image": "ctrlplane-test/busybox:1",
    "ports": [{"container_port": 8080}, {"container_port": 8081}],
}


async def routes_url(api: Api, token: dict[str, str]) -> tuple[dict[str, Any], str]:
    instance = await create(api, token, **WEB)
    return instance, f"/v1/instances/{instance['id']}/routes"


async def test_create_list_update_and_delete_a_route(api: Api) -> None:
    _, token = await tenant_token(api)
    instance, url = await routes_url(api, token)
    created = await api.client.post(url, json={"path": "/api/", "port": 8081, "strip_prefix": True}, headers=token)
    assert created.status_code == 201, created.text
    route = created.json()
    assert route["path"] == "/api" and route["port"] == 8081 and route["protocol"] == "http"
    assert route["weight"] == 100 and route["strip_prefix"] is True and route["instance_id"] == instance["id"]
    listed = (await api.client.get(url, headers=token)).json()
    assert [r["id"] for r in listed["items"]] == [route["id"]] and listed["total"] == 1
    patched = await api.client.patch(f"/v1/routes/{route['id']}", json={"weight": 30}, headers=token)
    assert patched.status_code == 200, patched.text
    assert patched.json()["weight"] == 30 and patched.json()["path"] == "/api"
    deleted = await api.client.delete(f"/v1/routes/{route['id']}", headers=token)
    assert deleted.status_code == 204
    assert (await api.client.get(url, headers=token)).json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"path": "api", "port": 8080}, "path must start with /"),
        ({"path": "/a*b", "port": 8080}, "plain URL path"),
        ({"path": "/a//b", "port": 8080}, "plain URL path"),
        ({"path": "/api", "port": 9999}, "not one of the instance's ports [8080, 8081]"),
        ({"path": "/api", "port": 8080, "weight": 101}, "weight"),
        ({"path": "/api", "port": 8080, "weight": -1}, "weight"),
        ({"path": "/api", "port": 8080, "protocol": "grpc"}, "protocol 'grpc' is not supported; supported: http"),
        ({"path": "/api", "port": 8080, "protocol": "tcp"}, "supported: http"),
        ({"path": "/api", "port": 8080, "color": "red"}, "color"),
    ],
)
async def test_invalid_routes_are_400_saying_why_and_change_nothing(
    api: Api, body: dict[str, Any], message: str
) -> None:
    _, token = await tenant_token(api)
    _, url = await routes_url(api, token)
    response = await api.client.post(url, json=body, headers=token)
    assert response.status_code == 400, response.text
    assert message in response.text
    assert (await api.client.get(url, headers=token)).json()["total"] == 0


HOSTILE_PATHS = [
    "/a/../b",
    "/..",
    "/a/.",
    "/a/./b",
    "/%2e%2e/admin",
    "/a/%2E%2e",
    "/%2e",
    "//",
    "//evil",
    "/api//",
    "/a\\b",
    "/a%5cb",
    "/a%2Fb",
    "/a%00b",
    "/a%zz",
    "/a%",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_dot_segments_empty_segments_backslashes_and_their_encodings_are_400(api: Api, path: str) -> None:
    _, token = await tenant_token(api)
    _, url = await routes_url(api, token)
    created = await api.client.post(url, json={"path": path, "port": 8080}, headers=token)
    assert created.status_code == 400, (path, created.text)
    assert created.json()["code"] == "invalid_input"
    assert (await api.client.get(url, headers=token)).json()["total"] == 0


async def test_paths_are_normalized_before_they_are_stored_and_compared(api: Api) -> None:
    _, token = await tenant_token(api)
    _, url = await routes_url(api, token)
    created = await api.client.post(url, json={"path": "/%7euser/%2e%2ewell%5fknown/", "port": 8080}, headers=token)
    assert created.status_code == 201, created.text
    route = created.json()
    assert route["path"] == "/~user/..well_known"
    same = await api.client.post(
        url, json={"path": "/~user/..well_known", "port": 8081, "strip_prefix": True}, headers=token
    )
    assert same.status_code == 400, "one path in two spellings is one path: strip_prefix must agree"
    escaped = await api.client.post(url, json={"path": "/a%2a%20b", "port": 8080}, headers=token)
    assert escaped.status_code == 201, escaped.text
    assert escaped.json()["path"] == "/a%2A%20b"
    refused = await api.client.patch(f"/v1/routes/{route['id']}", json={"path": "/x/../admin"}, headers=token)
    assert refused.status_code == 400
    kept = await api.client.get(f"/v1/routes/{route['id']}", headers=token)
    assert kept.json()["path"] == "/~user/..well_known"


async def test_routes_of_one_path_must_agree_on_strip_prefix(api: Api) -> None:
    _, token = await tenant_token(api)
    _, url = await routes_url(api, token)
    assert (
        await api.client.post(url, json={"path": "/a", "port": 8080, "strip_prefix": True}, headers=token)
    ).status_code == 201
    other = await api.client.post(url, json={"path": "/a", "port": 8081, "strip_prefix": False}, headers=token)
    assert other.status_code == 400 and "agree on strip_prefix" in other.text


async def test_a_patch_with_a_bad_port_is_400_and_keeps_the_route(api: Api) -> None:
    _, token = await tenant_token(api)
    _, url = await routes_url(api, token)
    route = (await api.client.post(url, json={"path": "/a", "port": 8080}, headers=token)).json()
    response = await api.client.patch(f"/v1/routes/{route['id']}", json={"port": 1234, "weight": 5}, headers=token)
    assert response.status_code == 400
    [kept] = (await api.client.get(url, headers=token)).json()["items"]
    assert kept["port"] == 8080 and kept["weight"] == 100


async def test_another_tenant_cannot_see_or_change_routes(api: Api) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    _, url = await routes_url(api, token)
    route = (await api.client.post(url, json={"path": "/a", "port": 8080}, headers=token)).json()
    assert (await api.client.get(url, headers=other)).status_code == 404
    assert (await api.client.post(url, json={"path": "/b", "port": 8080}, headers=other)).status_code == 404
    assert (await api.client.patch(f"/v1/routes/{route['id']}", json={"weight": 1}, headers=other)).status_code == 404
    assert (await api.client.delete(f"/v1/routes/{route['id']}", headers=other)).status_code == 404
    assert (await api.client.get(url, headers=token)).json()["items"][0]["weight"] == 100


async def test_max_routes_quota_is_enforced(api: Api) -> None:
    tenant_id, token = await tenant_token(api, plan="free")
    quota = (await api.client.get(f"/v1/admin/tenants/{tenant_id}/quota", headers=api.admin_headers)).json()["limits"]
    quota["max_routes"] = 2
    put = await api.client.put(f"/v1/admin/tenants/{tenant_id}/quota", json=quota, headers=api.admin_headers)
    assert put.status_code == 200, put.text
    _, url = await routes_url(api, token)
    for path in ("/a", "/b"):
        assert (await api.client.post(url, json={"path": path, "port": 8080}, headers=token)).status_code == 201
    third = await api.client.post(url, json={"path": "/c", "port": 8080}, headers=token)
    assert third.status_code == 403 and third.json()["code"] == "quota_exceeded"
    assert third.json()["details"] == {"quota": "max_routes", "used": 2, "limit": 2, "requested": 1}
    usage = (await api.client.get(f"/v1/admin/tenants/{tenant_id}/quota", headers=api.admin_headers)).json()["usage"]
    assert usage["routes"] == 2
