"""Rate limits: token buckets per tenant and per credential, shared across replicas.

Every ``/v1`` request of a tenant's caller takes one token from its credential's bucket (an API
key, or a JWT's subject) and one from its tenant's bucket; a request either bucket cannot pay for
is refused with 429 and ``Retry-After``. A bucket holds at most ``burst`` tokens and refills at
``per_minute / 60`` tokens a second; the sizes come from the tenant's plan
(``CTRLPLANE_RATE_LIMITS``; a plan without an entry uses the default plan's). System admins are
exempt.

A bucket is one row of ``rate_buckets``, refilled and debited by a single
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` statement, so concurrent requests on any number
of replicas never lose an update and never need a lock of their own. A request refused by the
tenant's bucket has already paid its credential's token: a caller that keeps hammering stays
limited.

Responses carry ``RateLimit-Limit`` (the burst), ``RateLimit-Remaining`` (whole tokens left) and
``RateLimit-Reset`` (seconds until the bucket is full again) of whichever bucket has fewer tokens
left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.auth.providers import Principal
from ctrlplane.db import Database
from ctrlplane.errors import RateLimited
from ctrlplane.ratelimit.models import RateBucket
from ctrlplane.settings import PlanRateLimit, Settings
from ctrlplane.tenants.models import Tenant


@dataclass(frozen=True)
class BucketState:
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int
    allowed: bool

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_seconds).encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(self.retry_after_seconds).encode()))
        return headers


class RateLimiter:
    def __init__(self, settings: Settings, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self._insert = pg_insert if db.dialect == "postgresql" else sqlite_insert
        postgres = db.dialect == "postgresql"
        self._least: Any = func.least if postgres else func.min
        self._greatest: Any = func.greatest if postgres else func.max

    def limits_for(self, plan: str | None) -> PlanRateLimit:
        limits = self.settings.rate_limits
        return limits.get(plan or "", limits[self.settings.default_plan])

    async def check(self, principal: Principal) -> BucketState | None:
        """Take this request's tokens; raise RateLimited (its state attached) when out of them.
        None for callers no limit applies to."""
        if not self.settings.rate_limits_enabled or principal.tenant_id is None:
            return None
        credential = (
            f"key:{principal.key_id}" if principal.key_id else f"user:{principal.tenant_id}:{principal.subject}"
        )
        now = self.clock()
        async with self.db.write() as session, session.begin():
            plan = (await session.execute(select(Tenant.plan).where(Tenant.id == principal.tenant_id))).scalar()
            limits = self.limits_for(plan)
            key_state = await self._take(
                session, credential, limits.credential_burst, limits.credential_per_minute, now
            )
            states = [key_state]
            if key_state.allowed:
                states.append(
                    await self._take(
                        session, f"tenant:{principal.tenant_id}", limits.tenant_burst, limits.tenant_per_minute, now
                    )
                )
        refused = next((s for s in states if not s.allowed), None)
        if refused is not None:
            error = RateLimited(
                f"rate limit exceeded; retry in {refused.retry_after_seconds} s",
                details={"limit": refused.limit, "retry_after_seconds": refused.retry_after_seconds},
            )
            error.rate_limit = refused  # type: ignore[attr-defined]
            raise error
        return min(states, key=lambda s: (s.remaining, -s.reset_seconds))

    async def _take(self, session: AsyncSession, key: str, burst: int, per_minute: int, now: float) -> BucketState:
        rate = per_minute / 60.0
        elapsed = self._greatest(0.0, now - RateBucket.refilled_at)  # another replica's clock may be ahead
        refilled = self._least(float(burst), RateBucket.tokens + elapsed * rate)
        statement = (
            self._insert(RateBucket)
            .values(key=key, tokens=float(burst - 1), refilled_at=now, allowed=True)
            .on_conflict_do_update(
                index_elements=[RateBucket.key],
                set_={
                    "tokens": case((refilled >= 1.0, refilled - 1.0), else_=refilled),
                    "refilled_at": self._greatest(RateBucket.refilled_at, now),
                    "allowed": refilled >= 1.0,
                },
            )
            .returning(RateBucket.tokens, RateBucket.allowed)
        )
        tokens, allowed = (await session.execute(statement)).one()
        tokens = max(0.0, float(tokens))
        return BucketState(
            limit=burst,
            remaining=math.floor(tokens),
            reset_seconds=math.ceil((burst - tokens) / rate),
            retry_after_seconds=max(1, math.ceil((1.0 - tokens) / rate)),
            allowed=bool(allowed),
        )
