from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import event, select

from ctrlplane.auth.models import ApiKey
from ctrlplane.auth.providers import APIKeyProvider, Authenticated, CachedKey, Principal, hash_api_key
from ctrlplane.db import Database
from ctrlplane.ids import TenantId
from ctrlplane.settings import Settings
from tests.conftest import Api, bearer


async def test_key_value_is_shown_once_and_stored_only_as_hash(api: Api, db: Database) -> None:
    tenant = await api.create_tenant("acme")
    created = await api.create_key(tenant["id"], ["deploy"], name="ci")
    assert created["key"].startswith("cpk_")
    assert created["roles"] == ["deploy"]
    listed = (await api.client.get("/v1/keys", headers=bearer(api.tokens.tenant(tenant["id"])))).json()
    assert listed["total"] == 1
    assert "key" not in listed["items"][0]
    assert created["key"] not in str(listed)
    async with db.read() as session:
        row = (await session.execute(select(ApiKey))).scalar_one()
    assert row.secret_hash == hash_api_key(created["key"])
    assert created["key"] not in repr(row.__dict__)


async def test_key_authenticates_and_records_last_use(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    created = await api.create_key(tenant["id"], ["deploy"])
    me = await api.client.get("/v1/keys/self", headers=bearer(created["key"]))
    assert me.status_code == 200
    assert me.json()["kind"] == "api_key"
    assert me.json()["can_deploy"] is True
    assert me.json()["can_admin"] is False
    listed = (await api.client.get("/v1/keys", headers=bearer(api.tokens.tenant(tenant["id"])))).json()
    assert listed["items"][0]["last_used_at"] is not None


@pytest.mark.dialects("concurrent authentications: the touch's write takes the dialect's write lock")
async def test_requests_in_flight_when_a_touch_is_due_record_the_last_use_once(
    api: Api, db: Database, settings: Settings
) -> None:
    """A busy key's requests take it from the row cache; when its ``last_used_at`` there is older
    than the touch interval, those in flight all see that, and one of them writes."""
    tenant = await api.create_tenant("acme")
    created = await api.create_key(tenant["id"], ["read"])
    db.rows.enable(10, needs_listener=False)
    provider = APIKeyProvider(msgspec.structs.replace(settings, api_key_touch_seconds=60), db)
    digest = hash_api_key(created["key"])
    stale = datetime.now(UTC) - timedelta(minutes=5)
    principal = Principal(
        subject=created["id"],
        kind="api_key",
        tenant_id=TenantId(tenant["id"]),
        roles=frozenset({"read"}),
        key_id=created["id"],
    )
    cached = CachedKey(created["id"], tenant["id"], frozenset({"read"}), None, stale, False, principal)
    ticket = db.rows.ticket()
    db.rows.put("api_key_digests", digest, ticket, created["id"])
    db.rows.put("api_keys", created["id"], ticket, cached)
    touches = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal touches
        touches += statement.lstrip().upper().startswith("UPDATE API_KEYS")

    async def authenticate() -> Authenticated:
        async with db.query() as session:
            return await provider.authenticate(created["key"], session)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        answers = await asyncio.gather(*(authenticate() for _ in range(20)))
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    assert {answer.principal.key_id for answer in answers} == {created["id"]}
    assert touches == 1
    async with db.read() as session:
        assert (await session.execute(select(ApiKey.last_used_at))).scalar_one() is not None


async def test_revoked_key_is_refused_at_once(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    created = await api.create_key(tenant["id"], ["read"])
    assert (await api.client.get("/v1/keys/self", headers=bearer(created["key"]))).status_code == 200
    revoked = await api.client.delete(f"/v1/keys/{created['id']}", headers=bearer(api.tokens.tenant(tenant["id"])))
    assert revoked.status_code == 204
    after = await api.client.get("/v1/keys/self", headers=bearer(created["key"]))
    assert after.status_code == 401
    assert after.json()["message"] == "API key revoked"


async def test_expired_key_is_refused(api: Api, db: Database) -> None:
    tenant = await api.create_tenant("acme")
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = await api.client.post(
        "/v1/keys",
        json={"name": "short", "roles": ["read"], "expires_at": soon},
        headers=bearer(api.tokens.tenant(tenant["id"])),
    )
    assert response.status_code == 201
    async with db.write() as session, session.begin():
        key = (await session.execute(select(ApiKey))).scalar_one()
        key.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    assert (await api.client.get("/v1/keys/self", headers=bearer(response.json()["key"]))).status_code == 401


async def test_expiry_in_the_past_is_400(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    response = await api.client.post(
        "/v1/keys",
        json={"name": "k", "roles": ["read"], "expires_at": "2020-01-01T00:00:00Z"},
        headers=bearer(api.tokens.tenant(tenant["id"])),
    )
    assert response.status_code == 400


async def test_unknown_key_is_401(api: Api) -> None:
    response = await api.client.get("/v1/keys/self", headers=bearer("cpk_not-a-real-key"))
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


async def test_read_key_cannot_mutate(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    read_key = await api.create_key(tenant["id"], ["read"])
    response = await api.client.post("/v1/keys", json={"name": "x", "roles": ["read"]}, headers=bearer(read_key["key"]))
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


async def test_deploy_token_cannot_manage_keys(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"], roles=["deploy"]))
    assert (await api.client.post("/v1/keys", json={"name": "x", "roles": ["read"]}, headers=token)).status_code == 403


async def test_unknown_role_is_400(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    response = await api.client.post(
        "/v1/keys", json={"name": "x", "roles": ["root"]}, headers=bearer(api.tokens.tenant(tenant["id"]))
    )
    assert response.status_code == 400


async def test_body_tenant_id_of_another_tenant_is_403(api: Api) -> None:
    a = await api.create_tenant("a")
    b = await api.create_tenant("b")
    response = await api.client.post(
        "/v1/keys",
        json={"name": "x", "roles": ["read"], "tenant_id": b["id"]},
        headers=bearer(api.tokens.tenant(a["id"])),
    )
    assert response.status_code == 403


async def test_admin_creates_key_for_named_tenant(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    missing = await api.client.post("/v1/keys", json={"name": "x", "roles": ["read"]}, headers=api.admin_headers)
    assert missing.status_code == 400
    assert "tenant_id" in missing.json()["message"]
    created = await api.client.post(
        "/v1/keys", json={"name": "x", "roles": ["admin"], "tenant_id": tenant["id"]}, headers=api.admin_headers
    )
    assert created.status_code == 201
    assert created.json()["tenant_id"] == tenant["id"]
    listed = (await api.client.get("/v1/keys", params={"tenant_id": tenant["id"]}, headers=api.admin_headers)).json()
    assert listed["total"] == 1


async def test_admin_key_for_unknown_tenant_is_404(api: Api) -> None:
    response = await api.client.post(
        "/v1/keys",
        json={"name": "x", "roles": ["read"], "tenant_id": "ten_01h455vb4pex5vsknk084sn02q"},
        headers=api.admin_headers,
    )
    assert response.status_code == 404


async def test_other_tenant_gets_404_for_key(api: Api) -> None:
    a = await api.create_tenant("a")
    b = await api.create_tenant("b")
    key = await api.create_key(a["id"], ["read"])
    response = await api.client.delete(f"/v1/keys/{key['id']}", headers=bearer(api.tokens.tenant(b["id"])))
    assert response.status_code == 404
    assert (await api.client.get("/v1/keys/self", headers=bearer(key["key"]))).status_code == 200
    listed = (await api.client.get("/v1/keys", headers=bearer(api.tokens.tenant(b["id"])))).json()
    assert listed["total"] == 0


async def test_whoami_for_system_admin(api: Api) -> None:
    me = (await api.client.get("/v1/keys/self", headers=api.admin_headers)).json()
    assert me["system_admin"] is True
    assert me["tenant_id"] is None
    assert me["kind"] == "user"
