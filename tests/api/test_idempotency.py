from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from ctrlplane.db import Database
from ctrlplane.idempotency import service as idempotency
from ctrlplane.idempotency.models import IdempotencyRecord
from ctrlplane.tenants.models import Tenant
from ctrlplane.timeutil import utc_now
from tests.conftest import Api, bearer

BODY = {"name": "Acme", "slug": "acme"}


async def _tenant_count(db: Database) -> int:
    async with db.read() as session:
        return int((await session.execute(select(func.count()).select_from(Tenant))).scalar_one())


async def test_same_key_same_body_replays_first_response(api: Api, db: Database) -> None:
    headers = {**api.admin_headers, "Idempotency-Key": "create-acme-1"}
    first = await api.client.post("/v1/admin/tenants", json=BODY, headers=headers)
    second = await api.client.post("/v1/admin/tenants", json=BODY, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await _tenant_count(db) == 1


async def test_same_key_different_body_is_422(api: Api, db: Database) -> None:
    headers = {**api.admin_headers, "Idempotency-Key": "k"}
    await api.client.post("/v1/admin/tenants", json=BODY, headers=headers)
    response = await api.client.post("/v1/admin/tenants", json={**BODY, "slug": "other"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert await _tenant_count(db) == 1


@pytest.mark.dialects("the claim is a unique-constraint insert and a locked row")
async def test_same_key_while_first_still_runs_is_409(api: Api, db: Database) -> None:
    await idempotency.claim(
        db,
        scope="-|user|root",
        key="busy",
        fingerprint=idempotency.request_fingerprint("POST", "/v1/admin/tenants", b"", b'{"name":"Acme","slug":"acme"}'),
        ttl=timedelta(hours=24),
        lease=timedelta(minutes=5),
    )
    response = await api.client.post(
        "/v1/admin/tenants",
        content=b'{"name":"Acme","slug":"acme"}',
        headers={**api.admin_headers, "Idempotency-Key": "busy", "Content-Type": "application/json"},
    )
    assert response.status_code == 409
    assert "in progress" in response.json()["message"]
    assert await _tenant_count(db) == 0


@pytest.mark.dialects("concurrent claims race on the key's unique constraint")
async def test_concurrent_requests_with_one_key_create_one_tenant(api: Api, db: Database) -> None:
    headers = {**api.admin_headers, "Idempotency-Key": "race"}
    responses = await asyncio.gather(
        *(api.client.post("/v1/admin/tenants", json=BODY, headers=headers) for _ in range(8))
    )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}
    created = [r for r in responses if r.status_code == 201]
    assert len({r.json()["id"] for r in created}) == 1
    assert await _tenant_count(db) == 1


@pytest.mark.dialects("taking a claim over locks its row (FOR UPDATE)")
async def test_abandoned_claim_is_taken_over_after_its_lease(api: Api, db: Database) -> None:
    body = b'{"name":"Acme","slug":"acme"}'
    claim = await idempotency.claim(
        db,
        scope="-|user|root",
        key="abandoned",
        fingerprint=idempotency.request_fingerprint("POST", "/v1/admin/tenants", b"", body),
        ttl=timedelta(hours=24),
        lease=timedelta(minutes=5),
    )
    async with db.write() as session, session.begin():
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == claim.record_id)
            .values(locked_until=utc_now() - timedelta(seconds=1))
        )
    response = await api.client.post(
        "/v1/admin/tenants",
        content=body,
        headers={**api.admin_headers, "Idempotency-Key": "abandoned", "Content-Type": "application/json"},
    )
    assert response.status_code == 201
    assert await _tenant_count(db) == 1


async def test_keys_are_scoped_to_the_caller(api: Api, db: Database) -> None:
    a = await api.create_tenant("a")
    b = await api.create_tenant("b")
    body = {"name": "ci", "roles": ["read"]}
    first = await api.client.post(
        "/v1/keys", json=body, headers={**bearer(api.tokens.tenant(a["id"])), "Idempotency-Key": "shared"}
    )
    second = await api.client.post(
        "/v1/keys", json=body, headers={**bearer(api.tokens.tenant(b["id"])), "Idempotency-Key": "shared"}
    )
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["tenant_id"] == b["id"]
    assert second.json()["key"] != first.json()["key"]


async def test_a_rejected_request_replays_its_rejection(api: Api, db: Database) -> None:
    await api.create_tenant("acme")
    headers = {**api.admin_headers, "Idempotency-Key": "dup"}
    first = await api.client.post("/v1/admin/tenants", json=BODY, headers=headers)
    second = await api.client.post("/v1/admin/tenants", json=BODY, headers=headers)
    assert first.status_code == second.status_code == 409
    assert second.headers["Idempotent-Replayed"] == "true"


async def test_expired_key_runs_the_request_again(api: Api, db: Database) -> None:
    headers = {**api.admin_headers, "Idempotency-Key": "old"}
    await api.client.post("/v1/admin/tenants", json=BODY, headers=headers)
    async with db.write() as session, session.begin():
        await session.execute(update(IdempotencyRecord).values(expires_at=utc_now() - timedelta(seconds=1)))
    again = await api.client.post("/v1/admin/tenants", json=BODY, headers=headers)
    assert again.status_code == 409
    assert "Idempotent-Replayed" not in again.headers
    assert "slug" in again.json()["message"]


async def test_overlong_key_is_400(api: Api) -> None:
    response = await api.client.post(
        "/v1/admin/tenants", json=BODY, headers={**api.admin_headers, "Idempotency-Key": "x" * 256}
    )
    assert response.status_code == 400


async def test_replayed_key_creation_never_stores_or_repeats_the_key_value(api: Api, db: Database) -> None:
    tenant = await api.create_tenant("acme")
    headers = {**bearer(api.tokens.tenant(tenant["id"])), "Idempotency-Key": "make-ci-key"}
    first = await api.client.post("/v1/keys", json={"name": "ci", "roles": ["deploy"]}, headers=headers)
    replay = await api.client.post("/v1/keys", json={"name": "ci", "roles": ["deploy"]}, headers=headers)
    assert first.json()["key"].startswith("cpk_")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert replay.json()["key"] != first.json()["key"]
    async with db.read() as session:
        stored = b"".join(r.response_body or b"" for r in (await session.execute(select(IdempotencyRecord))).scalars())
    assert first.json()["key"].encode() not in stored


async def test_denied_write_is_audited_under_the_caller(api: Api, db: Database) -> None:
    from ctrlplane.audit.models import AuditEntry

    tenant = await api.create_tenant("acme")
    read_key = await api.create_key(tenant["id"], ["read"])
    denied = await api.client.post("/v1/keys", json={"name": "x", "roles": ["read"]}, headers=bearer(read_key["key"]))
    assert denied.status_code == 403
    async with db.read() as session:
        entry = (await session.execute(select(AuditEntry).where(AuditEntry.outcome == "denied"))).scalar_one()
    assert entry.actor_kind == "api_key"
    assert entry.actor_subject == read_key["id"]
    assert entry.tenant_id == tenant["id"]
