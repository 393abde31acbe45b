"""A busy bucket reserves its next batch ahead: its requests keep spending what is held while the
reservation is under way, a request that finds the bucket empty waits for that reservation
instead of starting another, and no token is spent twice or lost (the row, the tokens held and the
tokens spent add up to the burst)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ctrlplane.auth.providers import Principal
from ctrlplane.db import Database
from ctrlplane.ids import TenantId
from ctrlplane.ratelimit.service import RateLimiter
from ctrlplane.settings import PlanRateLimit, Settings
from tests.api.test_rate_limits import Clock

pytestmark = pytest.mark.dialects("reservations are the dialect's INSERT ... ON CONFLICT, awaited in the background")

BURST = 1_000  # batches of up to 100, a tenth of the burst
LIMITS = {
    "free": PlanRateLimit(tenant_per_minute=60, tenant_burst=BURST, credential_per_minute=60, credential_burst=BURST)
}
CALLER = Principal(subject="ci", kind="user", tenant_id=TenantId("ten_ahead"), roles=frozenset({"read"}))
KEYS = ("user:ten_ahead:ci", "tenant:ten_ahead")


class GatedDebits:
    """The limiter's debits, held at a gate the test opens and closes, counted per bucket."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.started: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight = 0
        self._debit = limiter._debit
        limiter._debit = self  # type: ignore[method-assign]

    async def __call__(self, key: str, *args: Any) -> tuple[float, float]:
        self.started[key] += 1
        self.in_flight[key] += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[key])
        try:
            await self.open.wait()
            return await self._debit(key, *args)
        finally:
            self.in_flight[key] -= 1


@pytest.fixture
def limiter(settings: Settings, db: Database) -> RateLimiter:
    settings = msgspec.structs.replace(settings, rate_limits_enabled=True, rate_limits=LIMITS)
    return RateLimiter(settings, db, clock=Clock())  # frozen: no refill, so every token is accounted for


async def _row_tokens(db: Database, key: str) -> float:
    async with db.read() as session:
        row = (await session.execute(text("SELECT tokens FROM rate_buckets WHERE key = :k"), {"k": key})).one()
    return float(row.tokens)


async def test_a_busy_bucket_spends_what_it_holds_while_its_next_batch_is_reserved(
    limiter: RateLimiter, db: Database
) -> None:
    debits = GatedDebits(limiter)
    spent = 0
    for _ in range(300):  # the batches grow with what the caller spends, up to 100
        await limiter.check(CALLER, "free")
        spent += 1
    await limiter.drain()
    assert all(limiter._reserves[key].batch == 100 for key in KEYS)

    debits.open.clear()
    before = sum(debits.started.values())
    while sum(debits.started.values()) == before:  # spend down to where the next batch is reserved ahead
        await limiter.check(CALLER, "free")
        spent += 1
        await asyncio.sleep(0)  # as between a server's requests: a reservation started ahead gets to run
    assert set(debits.in_flight) == set(KEYS) and all(debits.in_flight[key] == 1 for key in KEYS)
    held = min(limiter._reserves[key].tokens for key in KEYS)
    assert held >= 1
    for _ in range(int(held)):  # answered from what is held, not waiting for the gated reservation
        await asyncio.wait_for(limiter.check(CALLER, "free"), timeout=5)
        spent += 1

    waiting = asyncio.create_task(limiter.check(CALLER, "free"))  # the bucket is empty now
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert debits.most_in_flight == 1  # it waits for the reservation under way, starts no second one
    debits.open.set()
    state = await asyncio.wait_for(waiting, timeout=5)
    spent += 1
    assert state is not None and state.allowed
    await limiter.drain()

    for key in KEYS:
        reserve = limiter._reserves[key]
        assert reserve.tokens <= 100  # never more than one batch held
        assert await _row_tokens(db, key) + reserve.tokens + spent == BURST


async def test_a_failed_reservation_ahead_leaves_the_next_request_to_reserve(limiter: RateLimiter) -> None:
    for _ in range(300):
        await limiter.check(CALLER, "free")
    await limiter.drain()
    working = limiter._debit
    failures = 0

    async def failing(*args: Any) -> tuple[float, float]:
        nonlocal failures
        failures += 1
        raise DBAPIError("INSERT", None, Exception("the database went away"))

    limiter._debit = failing  # type: ignore[method-assign]
    with pytest.raises(DBAPIError):
        for _ in range(200):  # what is held, then a request that must reserve and cannot
            await limiter.check(CALLER, "free")
            await asyncio.sleep(0)
    assert failures >= 2  # the one ahead (logged) and the request's own (raised: a 503 at the API)
    assert all(limiter._reserves[key].ahead is None for key in KEYS)
    limiter._debit = working  # type: ignore[method-assign]
    state = await limiter.check(CALLER, "free")
    assert state is not None and state.allowed
