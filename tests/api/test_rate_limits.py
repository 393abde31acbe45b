"""Rate limits through the API: token buckets per credential and per tenant, sized by plan, shared
in the database; 429 with Retry-After; RateLimit-* headers; system admins exempt."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest

from ctrlplane.db import connect
from ctrlplane.settings import PlanRateLimit, Settings
from tests.api.test_instances import create
from tests.api.test_telemetry import otlp_body, otlp_headers
from tests.conftest import Api, bearer

pytestmark = pytest.mark.dialects("buckets are taken with the dialect's INSERT ... ON CONFLICT and row locks")

LIMITS = {
    "free": PlanRateLimit(tenant_per_minute=60, tenant_burst=5, credential_per_minute=60, credential_burst=3),
    "pro": PlanRateLimit(tenant_per_minute=600, tenant_burst=50, credential_per_minute=600, credential_burst=20),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, rate_limits_enabled=True, rate_limits=LIMITS)


@pytest.fixture
def clock(app: Any) -> Clock:
    clock = Clock()
    app.state.services.rate_limiter.clock = clock
    return clock


def limit_headers(response: httpx.Response) -> tuple[int, int, int]:
    h = response.headers
    return int(h["RateLimit-Limit"]), int(h["RateLimit-Remaining"]), int(h["RateLimit-Reset"])


async def tenant_with_token(api: Api, slug: str = "acme", plan: str = "free") -> tuple[str, dict[str, str]]:
    tenant = await api.create_tenant(slug, plan=plan)
    return tenant["id"], bearer(api.tokens.tenant(tenant["id"]))


async def test_a_credential_past_its_burst_gets_429_with_retry_after(api: Api, clock: Clock) -> None:
    _, token = await tenant_with_token(api)
    seen = []
    for _ in range(3):
        response = await api.client.get("/v1/instances", headers=token)
        assert response.status_code == 200
        seen.append(limit_headers(response))
    assert [remaining for _, remaining, _ in seen] == [2, 1, 0]
    assert {limit for limit, _, _ in seen} == {3}
    assert [reset for _, _, reset in seen] == [1, 2, 3]

    refused = await api.client.get("/v1/instances", headers=token)
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "rate_limited"
    assert body["request_id"] == refused.headers["X-Request-ID"]
    assert refused.headers["Retry-After"] == "1"
    assert limit_headers(refused) == (3, 0, 3)

    writes = await api.client.post("/v1/instances", json={"name": "web", "image": "busybox"}, headers=token)
    assert writes.status_code == 429
    assert writes.headers["Retry-After"] == "1"


async def test_buckets_refill_with_time(api: Api, clock: Clock) -> None:
    _, token = await tenant_with_token(api)
    for _ in range(3):
        await api.client.get("/v1/instances", headers=token)
    assert (await api.client.get("/v1/instances", headers=token)).status_code == 429
    clock.advance(1.0)
    again = await api.client.get("/v1/instances", headers=token)
    assert again.status_code == 200
    assert limit_headers(again)[1] == 0
    clock.advance(0.5)
    assert (await api.client.get("/v1/instances", headers=token)).status_code == 429
    clock.advance(3600)
    full = await api.client.get("/v1/instances", headers=token)
    assert limit_headers(full) == (3, 2, 1)


async def test_system_admins_are_exempt(api: Api, clock: Clock) -> None:
    tenant_id, _ = await tenant_with_token(api)
    for _ in range(20):
        response = await api.client.get("/v1/admin/tenants", headers=api.admin_headers)
        assert response.status_code == 200
        assert "RateLimit-Limit" not in response.headers
    listed = await api.client.get("/v1/instances", params={"tenant_id": tenant_id}, headers=api.admin_headers)
    assert listed.status_code == 200


async def test_credentials_have_their_own_buckets_and_share_their_tenants(api: Api, clock: Clock) -> None:
    tenant_id, user = await tenant_with_token(api)
    key = await api.create_key(tenant_id, ["read"])
    by_key = bearer(key["key"])
    other_user = bearer(api.tokens.tenant(tenant_id, subject="bob"))
    clock.advance(3600)

    for _ in range(3):
        assert (await api.client.get("/v1/instances", headers=user)).status_code == 200
    assert (await api.client.get("/v1/instances", headers=user)).status_code == 429
    # the key's own bucket is full, but the tenant's has 2 of its 5 tokens left
    ok = await api.client.get("/v1/instances", headers=by_key)
    assert ok.status_code == 200
    assert limit_headers(ok) == (5, 1, 4)  # the tenant's bucket is the one nearer its end
    assert (await api.client.get("/v1/instances", headers=by_key)).status_code == 200
    tenant_empty = await api.client.get("/v1/instances", headers=other_user)
    assert tenant_empty.status_code == 429
    assert limit_headers(tenant_empty)[:2] == (5, 0)

    _, elsewhere = await tenant_with_token(api, "other")
    assert (await api.client.get("/v1/instances", headers=elsewhere)).status_code == 200


async def test_the_plan_sizes_the_buckets(api: Api, clock: Clock) -> None:
    _, pro = await tenant_with_token(api, "big", plan="pro")
    response = await api.client.get("/v1/instances", headers=pro)
    assert limit_headers(response)[:2] == (20, 19)
    for _ in range(19):
        assert (await api.client.get("/v1/instances", headers=pro)).status_code == 200
    assert (await api.client.get("/v1/instances", headers=pro)).status_code == 429


async def test_unauthenticated_requests_carry_no_rate_limit_headers(api: Api, clock: Clock) -> None:
    response = await api.client.get("/v1/instances")
    assert response.status_code == 401
    assert "RateLimit-Limit" not in response.headers


async def test_concurrent_requests_never_spend_a_token_twice(api: Api, clock: Clock) -> None:
    _, token = await tenant_with_token(api)
    responses = await asyncio.gather(*(api.client.get("/v1/instances", headers=token) for _ in range(12)))
    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 9
    assert sorted(limit_headers(r)[1] for r in responses if r.status_code == 200) == [0, 1, 2]


async def test_every_v1_operation_documents_429(api: Api) -> None:
    """Except the OTLP receiver, which instances call with their own token, outside the tenant
    boundary that rate-limits (docs/api.md, Telemetry)."""
    document = (await api.client.get("/schema/openapi.json")).json()
    checked = 0
    for path, item in document["paths"].items():
        if path.startswith("/v1"):
            for method, operation in item.items():
                if operation.get("security") == [{"instanceToken": []}]:
                    continue
                assert "429" in operation["responses"], f"{method} {path}"
                checked += 1
    assert checked > 40


async def test_an_unreachable_bucket_table_is_503_not_500(api: Api, app: Any, clock: Clock) -> None:
    _, token = await tenant_with_token(api)
    limiter = app.state.services.rate_limiter
    working, limiter.db = limiter.db, connect("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        for response in (
            await api.client.get("/v1/instances", headers=token),
            await api.client.post("/v1/instances", json={"name": "web", "image": "busybox"}, headers=token),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "unavailable"
            assert "RateLimit-Limit" not in response.headers
    finally:
        await limiter.db.dispose()
        limiter.db = working


async def test_telemetry_exports_have_buckets_of_their_own(api: Api, clock: Clock, settings: Settings) -> None:
    """An instance's OTLP exports are limited by its plan per instance token (429, Retry-After and
    RateLimit-* like the API) and never spend its tenant's API calls."""
    _, token = await tenant_with_token(api)  # free: credential burst 3
    instance = await create(api, token)
    export = {"json": otlp_body(), "headers": otlp_headers(settings, instance["id"])}
    answers = [await api.client.post("/v1/otlp/v1/traces", **export) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429], [r.text for r in answers]
    assert [limit_headers(r)[:2] for r in answers] == [(3, 2), (3, 1), (3, 0), (3, 0)]
    refused = answers[-1]
    assert int(refused.headers["Retry-After"]) >= 1 and refused.json()["code"] == "rate_limited"
    metrics = await api.client.post("/v1/otlp/v1/metrics", json={"resourceMetrics": []}, headers=export["headers"])
    assert metrics.status_code == 429, "metrics exports spend the same buckets as traces"
    # the tenant's own credential spent one token on the create, none on the exports
    listed = await api.client.get("/v1/instances", headers=token)
    assert listed.status_code == 200 and limit_headers(listed)[1] == 1
    clock.advance(1.0)  # one token back at 60 a minute
    assert (await api.client.post("/v1/otlp/v1/traces", **export)).status_code == 200


async def test_node_calls_have_buckets_of_their_own(api: Api, clock: Clock) -> None:
    """A node's calls are limited per credential (the default plan's credential bucket: free, 3),
    429 with Retry-After like the API."""
    from tests.api.nodes.test_nodes import NOW, enrolled

    node = await enrolled(api, "web-01")
    beat = {"node_id": node.node_id, "timestamp": NOW}
    url = f"/v1/nodes/{node.node_id}/heartbeat"
    answers = [await api.client.post(url, json=beat, headers=node.headers) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429], [r.text for r in answers]
    assert int(answers[-1].headers["Retry-After"]) >= 1 and answers[-1].json()["code"] == "rate_limited"
    clock.advance(1.0)
    assert (await api.client.post(url, json=beat, headers=node.headers)).status_code == 200
