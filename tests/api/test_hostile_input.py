"""Inputs found to produce 500s or backend-dependent answers; each must be a clear 4xx."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import jwt
import msgspec
import pytest
import uvicorn

from ctrlplane.serving import server_config
from ctrlplane.settings import Settings
from tests.api.test_instances import WEB, create, tenant_token
from tests.api.test_telemetry import otlp_headers
from tests.conftest import JWT_SECRET, Api, bearer
from tests.waiting import eventually

pytestmark = pytest.mark.dialects("each dialect refuses NUL, 64-bit overflows and out-of-range times its own way")


async def test_naive_or_unrepresentable_key_expiry_is_400(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"]))
    for expires_at in ("2030-01-01T00:00:00", "9999-12-31T23:59:59-14:00"):
        response = await api.client.post(
            "/v1/keys", json={"name": "k", "roles": ["read"], "expires_at": expires_at}, headers=token
        )
        assert response.status_code == 400, (expires_at, response.text)


async def test_audit_times_out_of_range_are_400(api: Api) -> None:
    for params in ({"since": "0001-01-01T00:00:00+14:00"}, {"until": "9999-12-31T23:59:59-14:00"}):
        response = await api.client.get("/v1/admin/audit", params=params, headers=api.admin_headers)
        assert response.status_code == 400, (params, response.text)


async def test_event_ids_past_64_bits_are_400(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"]))
    huge = "99999999999999999999999"
    assert (await api.client.get("/v1/events", params={"since": huge}, headers=token)).status_code == 400
    assert (await api.client.get("/v1/events", headers={**token, "Last-Event-ID": huge})).status_code == 400


async def test_nul_characters_are_400_on_every_database(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"]))
    assert (await api.client.get("/v1/instances?name=a%00b", headers=token)).status_code == 400
    response = await api.client.post(
        "/v1/admin/tenants",
        content=b'{"name": "a\\u0000b", "slug": "nul"}',
        headers={**api.admin_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert (await api.client.get("/v1/admin/tenants", headers=api.admin_headers)).json()["total"] == 1


async def test_token_with_absurd_expiry_is_401(api: Api) -> None:
    token = jwt.encode({"sub": "x", "iat": 0, "exp": 1e20, "roles": ["admin"]}, JWT_SECRET, algorithm="HS256")
    response = await api.client.get("/v1/keys/self", headers=bearer(token))
    assert response.status_code == 401


async def test_short_ttl_token_is_accepted(api: Api) -> None:
    token = api.tokens.admin(ttl=timedelta(seconds=30))
    assert (await api.client.get("/v1/keys/self", headers=bearer(token))).status_code == 200


DEEP_BODIES = ("[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000, '{"name": ' + "[" * 65 + "]" * 65 + "}")


async def test_deeply_nested_json_is_400_on_every_writing_route(api: Api, settings: Settings) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    targets = [
        ("POST", "/v1/instances", token),
        ("PATCH", f"/v1/instances/{instance['id']}", token),
        ("POST", "/v1/keys", token),
        ("POST", "/v1/admin/tenants", api.admin_headers),
        ("POST", "/v1/otlp/v1/traces", otlp_headers(settings, instance["id"])),
        ("POST", "/v1/otlp/v1/metrics", otlp_headers(settings, instance["id"])),
    ]
    for method, path, headers in targets:
        for body in DEEP_BODIES:
            response = await api.client.request(
                method, path, content=body, headers={**headers, "Content-Type": "application/json"}
            )
            assert response.status_code == 400, (path, body[:20], response.text)
            assert response.json()["code"] == "invalid_input"
            assert "nests deeper" in response.json()["message"]


async def test_brackets_inside_strings_do_not_count_as_nesting(api: Api) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post(
        "/v1/instances", json={**WEB, "env": {"BRACKETS": "[" * 500 + "{" * 500}}, headers=token
    )
    assert response.status_code == 201, response.text


OUT_OF_RANGE = ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z")


async def test_out_of_range_times_are_400_in_every_time_parameter(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    reads = [
        (f"/v1/instances/{instance['id']}/metrics", "since", token),
        (f"/v1/instances/{instance['id']}/metrics", "until", token),
        (f"/v1/instances/{instance['id']}/logs", "since", token),
        ("/v1/admin/audit", "since", api.admin_headers),
        ("/v1/admin/audit", "until", api.admin_headers),
    ]
    for path, name, headers in reads:
        for moment in OUT_OF_RANGE:
            response = await api.client.get(path, params={name: moment}, headers=headers)
            assert response.status_code == 400, (path, name, moment, response.text)
            assert name in response.json()["message"]


async def test_absurd_metric_steps_are_400(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    path = f"/v1/instances/{instance['id']}/metrics"
    for step in ("9" * 30 + "s", "99999999999d", "401d", "0s", "1e5s"):
        response = await api.client.get(path, params={"step": step}, headers=token)
        assert response.status_code == 400, (step, response.text)
    assert (await api.client.get(path, params={"step": "5m"}, headers=token)).status_code == 200


async def test_oversized_header_is_a_json_431(api: Api) -> None:
    _, token = await tenant_token(api)
    for headers in ({**token, "X-Padding": "a" * 20_000}, {"Authorization": "Bearer " + "a" * 20_000}):
        response = await api.client.get("/v1/instances", headers=headers)
        assert response.status_code == 431, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["code"] == "header_too_large" and body["request_id"]
        assert "aaaa" not in response.text


@pytest.fixture
async def served(app: Any) -> AsyncIterator[tuple[str, int]]:
    """The app behind the same uvicorn configuration ``ctrlplane serve`` uses."""
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, "uvicorn serving")
    yield server.servers[0].sockets[0].getsockname()[:2]
    server.should_exit = True
    await asyncio.wait_for(task, timeout=15)


async def _raw_request(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    """The answer to ``request`` sent as HTTP/1.0 (no chunked answer to decode); a request left
    unterminated (no blank line) is a head still arriving, which the server must bound."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_header_block_past_the_server_buffer_is_a_json_431(served: tuple[str, int]) -> None:
    request = b"GET /v1/instances HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 70_000
    status, headers, body = await _raw_request(served, request)
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert msgspec.json.decode(body)["code"] == "header_too_large"


async def test_malformed_request_line_is_a_json_400(served: tuple[str, int]) -> None:
    status, headers, body = await _raw_request(served, b"GET /v1 /x HTTP/1.0\r\nHost: x\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert msgspec.json.decode(body)["code"] == "invalid_input"


async def test_strings_for_integers_booleans_or_times_are_400_naming_the_field(api: Api) -> None:
    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    cases = [
        ("POST", "/v1/instances", {**WEB, "name": "two", "replicas": "2"}, "replicas"),
        ("POST", "/v1/instances", {**WEB, "name": "two", "resources": {"cpu_millis": "500"}}, "resources.cpu_millis"),
        ("POST", f"/v1/instances/{instance['id']}/scale", {"replicas": "2"}, "replicas"),
        ("POST", "/v1/keys", {"name": "k", "roles": ["read"], "expires_at": "1e10"}, "expires_at"),
        ("POST", "/v1/keys", {"name": "k", "roles": ["read"], "expires_at": 10000000000}, "expires_at"),
        ("PUT", f"/v1/admin/tenants/{tenant_id}/quota", {"max_instances": "5"}, "max_instances"),
    ]
    for method, path, body, field in cases:
        headers = api.admin_headers if "/admin/" in path else token
        response = await api.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 400, (path, body, response.text)
        keys = [f["key"] for f in response.json()["details"]["fields"]]
        assert field in keys, (path, response.text)
    listed = (await api.client.get("/v1/instances", headers=token)).json()
    assert [i["name"] for i in listed["items"]] == [instance["name"]]
    assert (await api.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()["replicas"] == 1


async def test_health_check_enabled_as_a_string_is_400(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    response = await api.client.post(
        f"/v1/instances/{instance['id']}/health/checks",
        json={"name": "up", "type": "tcp", "target": "80", "enabled": "false"},
        headers=token,
    )
    assert response.status_code == 400, response.text
    assert "enabled" in [f["key"] for f in response.json()["details"]["fields"]]


async def test_every_missing_field_is_listed_with_its_real_path(api: Api) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post("/v1/instances", json={"ports": [{}]}, headers=token)
    assert response.status_code == 400
    keys = {f["key"] for f in response.json()["details"]["fields"]}
    assert keys == {"name", "image", "ports[0].container_port"}
    assert "data" not in response.text


async def test_patterns_are_described_in_words(api: Api) -> None:
    _, token = await tenant_token(api)
    for body in ({**WEB, "name": "Not A Label"}, {**WEB, "env": {"1BAD": "x"}}, {**WEB, "image": "UPPER CASE"}):
        response = await api.client.post("/v1/instances", json=body, headers=token)
        assert response.status_code == 400, response.text
        assert "regex" not in response.text and "^" not in response.text, response.text


async def test_a_body_of_the_wrong_shape_names_the_body(api: Api) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post(
        "/v1/instances", content=b"[1]", headers={**token, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert [f["key"] for f in response.json()["details"]["fields"]] == ["body"]


async def test_suspend_and_unsuspend_accept_an_absent_body(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    suspended = await api.client.post(f"/v1/admin/tenants/{tenant['id']}/suspend", headers=api.admin_headers)
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended"
    resumed = await api.client.post(f"/v1/admin/tenants/{tenant['id']}/unsuspend", headers=api.admin_headers)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active"
    token = bearer(api.tokens.tenant(tenant["id"]))
    instance = await create(api, token)
    stopped = await api.client.post(f"/v1/instances/{instance['id']}/suspend", headers=api.admin_headers)
    assert stopped.status_code == 202, stopped.text
    assert stopped.json()["suspended_at"] is not None


async def test_unknown_query_parameters_on_reads_are_400(api: Api) -> None:
    tenant_id, token = await tenant_token(api)
    other_id, other_token = await tenant_token(api, "other")
    await create(api, other_token)
    mine = await create(api, token)
    filtered = await api.client.get(f"/v1/instances?tenant_id={tenant_id}", headers=api.admin_headers)
    assert filtered.status_code == 200, "an admin's tenant_id filters, never lists everything"
    assert [i["id"] for i in filtered.json()["items"]] == [mine["id"]]
    foreign = await api.client.get(f"/v1/instances?tenant_id={other_id}", headers=token)
    assert foreign.status_code == 403
    for path, headers in (
        ("/v1/instances?tenant=x", api.admin_headers),
        ("/v1/instances?stat=running", token),
        ("/v1/admin/tenants?plan=pro", api.admin_headers),
        ("/v1/keys?bogus=1", token),
    ):
        response = await api.client.get(path, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["details"]["fields"][0]["source"] == "query"
    declared = await api.client.get("/v1/instances?state=running&limit=5", headers=token)
    assert declared.status_code == 200, declared.text


async def _operations(api: Api) -> list[tuple[str, str, bool]]:
    """Every (method, path with dummy IDs, has a JSON body) of the OpenAPI document under /v1."""
    document = (await api.client.get("/schema/openapi.json")).json()
    found = []
    for path, item in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "x_missing", path)
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                found.append((method.upper(), concrete, "requestBody" in operation))
    return found


async def test_every_route_refuses_deep_json_and_oversized_headers_without_a_5xx(api: Api) -> None:
    operations = await _operations(api)
    assert len(operations) > 50
    for method, path, has_body in operations:
        if has_body:
            deep = await api.client.request(
                method, path, content=DEEP_BODIES[1], headers={**api.admin_headers, "Content-Type": "application/json"}
            )
            assert deep.status_code == 400, (method, path, deep.text)
        padded = await api.client.request(method, path, headers={**api.admin_headers, "X-Padding": "p" * 9000})
        assert padded.status_code == 431, (method, path, padded.text)
        assert padded.json()["code"] == "header_too_large"


async def test_every_read_route_refuses_an_unknown_query_parameter(api: Api) -> None:
    for method, path, _ in await _operations(api):
        if method != "GET":
            continue
        response = await api.client.get(path, params={"no_such_parameter": "1"}, headers=api.admin_headers)
        assert response.status_code == 400, (path, response.text)
        assert "no_such_parameter" in response.json()["message"]
