"""Inputs found to produce 500s or backend-dependent answers; each must be a clear 4xx."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from tests.conftest import JWT_SECRET, Api, bearer

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
