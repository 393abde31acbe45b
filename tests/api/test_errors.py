from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from ctrlplane import __version__
from ctrlplane.app import create_app
from ctrlplane.db import connect
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from tests.conftest import Api


def _is_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"message", "code", "request_id"}
    assert body["request_id"] == response.headers["X-Request-ID"]
    if code is not None:
        assert body["code"] == code
    assert "Traceback" not in response.text
    return dict(body)


async def test_unknown_json_field_is_400_naming_it(api: Api) -> None:
    response = await api.client.post(
        "/v1/admin/tenants", json={"name": "A", "slug": "a", "colour": "red"}, headers=api.admin_headers
    )
    body = _is_error(response, 400, "invalid_input")
    assert "colour" in body["message"]


async def test_malformed_json_is_400(api: Api) -> None:
    response = await api.client.post(
        "/v1/admin/tenants",
        content=b'{"name": "A", "slug": ',
        headers={**api.admin_headers, "Content-Type": "application/json"},
    )
    _is_error(response, 400, "invalid_input")


async def test_empty_body_is_400(api: Api) -> None:
    response = await api.client.post(
        "/v1/admin/tenants", content=b"", headers={**api.admin_headers, "Content-Type": "application/json"}
    )
    _is_error(response, 400)


async def test_wrong_type_is_400_naming_the_field(api: Api) -> None:
    response = await api.client.post("/v1/admin/tenants", json={"name": 5, "slug": "a"}, headers=api.admin_headers)
    body = _is_error(response, 400, "invalid_input")
    assert "name" in body["message"]


async def test_body_over_one_mebibyte_is_413_and_changes_nothing(api: Api) -> None:
    response = await api.client.post(
        "/v1/admin/tenants",
        content=b'{"name": "' + b"a" * (1024 * 1024) + b'", "slug": "big"}',
        headers={**api.admin_headers, "Content-Type": "application/json"},
    )
    _is_error(response, 413, "payload_too_large")
    listed = (await api.client.get("/v1/admin/tenants", headers=api.admin_headers)).json()
    assert listed["total"] == 0


async def test_unknown_route_is_json_404(api: Api) -> None:
    _is_error(await api.client.get("/v1/nothing-here", headers=api.admin_headers), 404, "not_found")


async def test_wrong_method_is_json_405(api: Api) -> None:
    _is_error(await api.client.put("/v1/keys", json={}, headers=api.admin_headers), 405)


async def test_missing_token_is_401_json(api: Api) -> None:
    body = _is_error(await api.client.get("/v1/admin/tenants"), 401, "unauthenticated")
    assert "Bearer" in body["message"]


@pytest.mark.parametrize("limit", ["0", "101", "abc", "-1"])
async def test_limit_out_of_range_is_400(api: Api, limit: str) -> None:
    _is_error(await api.client.get("/v1/admin/tenants", params={"limit": limit}, headers=api.admin_headers), 400)


async def test_forged_cursor_is_400(api: Api) -> None:
    response = await api.client.get("/v1/admin/tenants", params={"cursor": "!!!"}, headers=api.admin_headers)
    _is_error(response, 400, "invalid_input")


async def test_request_id_is_echoed_when_valid_and_replaced_when_not(api: Api) -> None:
    echoed = await api.client.get("/healthz", headers={"X-Request-ID": "ci-run-7.step:3"})
    assert echoed.headers["X-Request-ID"] == "ci-run-7.step:3"
    replaced = await api.client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert replaced.headers["X-Request-ID"].startswith("req_")
    generated = await api.client.get("/healthz")
    assert generated.headers["X-Request-ID"].startswith("req_")


async def test_every_response_carries_the_version_header(api: Api) -> None:
    for response in (
        await api.client.get("/healthz"),
        await api.client.get("/v1/admin/tenants"),
        await api.client.get("/v1/nope"),
        await api.client.get("/v1/admin/tenants", headers=api.admin_headers),
    ):
        assert response.headers["X-Ctrlplane-Version"] == __version__


async def test_liveness_and_readiness(api: Api) -> None:
    assert (await api.client.get("/healthz")).json()["status"] == "ok"
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok"}


async def test_readiness_is_503_with_a_message_when_the_database_is_gone(tmp_path: Path) -> None:
    unreachable = connect("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    settings = Settings(data_dir=str(tmp_path), jwt_secret="x" * 40, providers=())
    app = create_app(settings, providers=ProviderRegistry(), db=unreachable)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/readyz")
        body = _is_error(response, 503, "unavailable")
        assert "database" in body["message"]
        assert (await client.get("/healthz")).status_code == 200
    await unreachable.dispose()


async def test_api_call_is_503_when_the_database_is_gone(tmp_path: Path) -> None:
    unreachable = connect("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    settings = Settings(data_dir=str(tmp_path), jwt_secret="x" * 40, providers=())
    app = create_app(settings, providers=ProviderRegistry(), db=unreachable)
    from datetime import timedelta

    from ctrlplane.auth.tokens import issue_token

    admin = issue_token(settings, subject="root", tenant_id=None, roles=["admin"], ttl=timedelta(minutes=5))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        headers = {"Authorization": f"Bearer {admin}"}
        _is_error(await client.get("/v1/admin/tenants", headers=headers), 503, "unavailable")
        _is_error(
            await client.post("/v1/admin/tenants", json={"name": "a", "slug": "a"}, headers=headers), 503, "unavailable"
        )
    await unreachable.dispose()


async def test_openapi_documents_every_route_with_its_errors(api: Api) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    operations = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if path.startswith("/v1")
    ]
    assert len(operations) >= 15
    for path, method, op in operations:
        assert op.get("operationId"), f"{method} {path} has no operationId"
        for status in ("400", "401", "403", "503"):
            assert status in op["responses"], f"{method} {path} does not document {status}"
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorBody"), f"{method} {path} {status}: {schema}"
        if method in ("post", "put", "patch", "delete"):
            assert "413" in op["responses"] and "409" in op["responses"], f"{method} {path}"
    assert {"message", "code", "request_id"} <= set(document["components"]["schemas"]["ErrorBody"]["properties"])
