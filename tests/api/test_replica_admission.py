"""Admission across replicas: what one replica changes, another enforces on its very next request,
and the rate-limit buckets they share (each replica reserving tokens in batches) never let a
caller through more than the bucket holds.

Replica A is the test's ``app``; replica B is a second app with its own Database (its own pools,
its own rate limiter) on the same database, on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ctrlplane.app import create_app
from ctrlplane.db import Database, connect
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import PlanRateLimit, Settings
from tests.api.test_rate_limits import Clock
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider

pytestmark = pytest.mark.dialects("replicas share buckets and rows through the database's locks")

LIMITS = {
    "free": PlanRateLimit(tenant_per_minute=60, tenant_burst=1000, credential_per_minute=60, credential_burst=40),
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, rate_limits_enabled=True, rate_limits=LIMITS)


@pytest.fixture
async def replica_b(settings: Settings, db: Database) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    other = connect(settings.resolved_database_url)
    app = create_app(settings, providers=ProviderRegistry([FakeProvider()]), db=other)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50001))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://replica-b.test") as client:
            yield client, app
    finally:
        await other.dispose()


async def test_a_key_revoked_on_one_replica_is_refused_by_another_at_once(
    api: Api, replica_b: tuple[httpx.AsyncClient, Any]
) -> None:
    b, _ = replica_b
    tenant = await api.create_tenant("acme")
    key = await api.create_key(tenant["id"], ["read"])
    by_key = bearer(key["key"])
    assert (await b.get("/v1/instances", headers=by_key)).status_code == 200
    revoked = await api.client.delete(f"/v1/keys/{key['id']}", headers=bearer(api.tokens.tenant(tenant["id"])))
    assert revoked.status_code == 204, revoked.text
    refused = await b.get("/v1/instances", headers=by_key)
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"


async def test_a_tenant_suspended_on_one_replica_cannot_write_through_another(
    api: Api, replica_b: tuple[httpx.AsyncClient, Any]
) -> None:
    b, _ = replica_b
    tenant = await api.create_tenant("acme")
    user = bearer(api.tokens.tenant(tenant["id"]))
    key = bearer((await api.create_key(tenant["id"], ["deploy"]))["key"])
    assert (await b.get("/v1/instances", headers=user)).status_code == 200
    suspended = await api.client.post(
        f"/v1/admin/tenants/{tenant['id']}/suspend", json={"reason": "overdue"}, headers=api.admin_headers
    )
    assert suspended.status_code == 200, suspended.text
    for token in (user, key):
        denied = await b.post("/v1/instances", json={"name": "web", "image": "busybox"}, headers=token)
        assert denied.status_code == 403
        assert denied.json()["code"] == "tenant_suspended"
        assert (await b.get("/v1/instances", headers=token)).status_code == 200


async def test_replicas_sharing_a_bucket_never_let_more_through_than_it_holds(
    api: Api, app: Any, replica_b: tuple[httpx.AsyncClient, Any]
) -> None:
    b, b_app = replica_b
    clock = Clock()  # frozen: no refill, so the credential bucket holds exactly its burst of 40
    app.state.services.rate_limiter.clock = clock
    b_app.state.services.rate_limiter.clock = clock
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"]))
    admitted = {"a": 0, "b": 0}
    first_refusal_total = None
    for _ in range(60):
        for name, client in (("a", api.client), ("b", b)):
            emptied = sum(admitted.values()) == 40
            response = await client.get("/v1/instances", headers=token)
            # which of the two refuses first depends on their batches; once the burst is spent,
            # both refuse every request
            if emptied or response.status_code != 200:
                assert response.status_code == 429, response.text
                assert response.json()["code"] == "rate_limited"
                if first_refusal_total is None:
                    first_refusal_total = sum(admitted.values())
            else:
                admitted[name] += 1
    # every token either replica spent was taken from the shared row: the burst, never more
    assert sum(admitted.values()) == 40
    assert admitted["a"] > 0 and admitted["b"] > 0
    # a replica refuses only once the row is empty: what the other still held was one batch
    # (at most a tenth of the burst: 4 tokens)
    assert first_refusal_total is not None and first_refusal_total >= 40 - 4


async def test_busy_callers_reserve_tokens_in_batches_not_per_request(api: Api, app: Any, db: Database) -> None:
    clock = Clock()
    limiter = app.state.services.rate_limiter
    limiter.clock = clock
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"]))
    debits = 0
    debit = limiter._debit

    async def counted(*args: Any) -> tuple[float, float]:
        nonlocal debits
        debits += 1
        return await debit(*args)

    limiter._debit = counted
    remaining = []
    for _ in range(40):
        response = await api.client.get("/v1/instances", headers=token)
        assert response.status_code == 200
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert (await api.client.get("/v1/instances", headers=token)).status_code == 429
    # one replica: the headers count down exactly as a per-request debit would
    assert remaining == list(range(39, -1, -1))
    # ...but the credential's bucket (burst 40: batches of up to 4) and the tenant's (burst 1000:
    # up to 100) were debited far fewer than 2 x 41 times
    assert debits < 41


async def test_reserved_tokens_lapse_after_the_hold_period(api: Api, app: Any, db: Database) -> None:
    clock = Clock()
    limiter = app.state.services.rate_limiter
    limiter.clock = clock
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"]))
    for _ in range(10):
        assert (await api.client.get("/v1/instances", headers=token)).status_code == 200
    held = limiter._reserves[f"user:{tenant['id']}:alice"].tokens
    clock.advance(limiter.hold)
    after = await api.client.get("/v1/instances", headers=token)
    assert after.status_code == 200
    # the lapsed tokens stay spent: 10 requests plus what was held, refilled by one hold period
    async with db.read() as session:
        row = (
            await session.execute(
                text("SELECT tokens FROM rate_buckets WHERE key = :k"), {"k": f"user:{tenant['id']}:alice"}
            )
        ).one()
    assert held >= 1
    assert row.tokens <= 40 - 11 - held + limiter.hold * 1.0


async def test_read_requests_cannot_write(db: Database) -> None:
    async with db.query() as session:
        with pytest.raises(DBAPIError):
            await session.execute(text("DELETE FROM tenants"))
