"""Rate limits: token buckets per tenant and per credential, shared across replicas.

Every ``/v1`` request of a tenant's caller takes one token from its credential's bucket (an API
key, or a JWT's subject) and one from its tenant's bucket; a request either bucket cannot pay for
is refused with 429 and ``Retry-After``. A bucket holds at most ``burst`` tokens and refills at
``per_minute / 60`` tokens a second; the sizes come from the tenant's plan
(``CTRLPLANE_RATE_LIMITS``; a plan without an entry uses the default plan's). System admins are
exempt.

A bucket is one row of ``rate_buckets``, shared by every replica, refilled and debited by a single
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` statement, so concurrent replicas never lose an
update and never need a lock of their own. A replica does not debit the row once per request: it
**reserves** tokens in batches and spends them locally. The first request of a bucket reserves
one token; each later reservation asks for as many tokens as the replica spent from that bucket
in the current and the previous hold period, up to ``CTRLPLANE_RATE_LIMIT_BATCH`` and a tenth of
the burst (so a burst under 20 is debited one token at a time, exactly). A reservation the row
cannot pay in full falls back to a single token, so near the limit every replica takes one token
at a time. Reserved tokens not spent within ``CTRLPLANE_RATE_LIMIT_HOLD_SECONDS`` of the bucket's
latest reservation lapse (they stay spent). A busy bucket reserves ahead: when what it holds falls
under a quarter of its batch (of 4 or more), the request that found it so starts a reservation in
the background for what the batch lacks (it never holds more than one batch), and later requests
keep spending the tokens left meanwhile; only a request that finds the bucket empty waits for the
database, on a busy event loop several milliseconds. Requests of one bucket on one replica take
tokens in turn (an ``asyncio.Lock`` around a reservation they wait for), so concurrent requests
never spend a token twice.

Accuracy (docs/operations.md): with one replica the result is exactly that of a per-request debit
(every token a request spends was taken from the row, and only this replica takes them). With R
replicas a caller can be refused while up to R-1 batches sit reserved, unspent, at the others, and
can be let through up to R batches beyond the burst (tokens reserved just before the row refilled);
a batch is at most a tenth of the burst, so the error is at most R/10 of the burst either way.

Responses carry ``RateLimit-Limit`` (the burst), ``RateLimit-Remaining`` (whole tokens left) and
``RateLimit-Reset`` (seconds until the bucket is full again) of whichever bucket has fewer tokens
left: this replica's reserved tokens plus the row's tokens as of its last reservation, refilled
to now (exact with one replica; blind to the other replicas' spending since then).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from sqlalchemy import Float, String, bindparam, case, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ctrlplane.auth.providers import Principal
from ctrlplane.db import Database
from ctrlplane.errors import RateLimited
from ctrlplane.ratelimit.models import RateBucket
from ctrlplane.settings import PlanRateLimit, Settings

log = structlog.get_logger("ctrlplane.ratelimit")


class BucketState(msgspec.Struct, frozen=True):
    """A bucket as one request left it: what its headers say is worked out only for the bucket
    a response reports."""

    limit: int
    tokens: float
    """This replica's reserved tokens plus the row's, refilled to now."""
    rate: float
    """Tokens a second."""
    allowed: bool

    @property
    def remaining(self) -> int:
        return math.floor(self.tokens)

    @property
    def reset_seconds(self) -> int:
        return math.ceil((self.limit - self.tokens) / self.rate)

    @property
    def retry_after_seconds(self) -> int:
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_seconds).encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(self.retry_after_seconds).encode()))
        return headers


@dataclass
class _Reserve:
    """This replica's share of one shared bucket."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tokens: float = 0.0
    """Reserved from the row, not yet spent."""
    lapses_at: float = 0.0
    shared: float = 0.0
    """The row's tokens right after this replica's last reservation..."""
    shared_at: float = 0.0
    """...and when that was."""
    period_started: float = 0.0
    spent: int = 0
    spent_before: int = 0
    batch: int = 1
    """The size of its latest reservation."""
    ahead: asyncio.Task[None] | None = None
    """A reservation ahead of need under way, if any."""


MAX_RESERVES = 50_000
"""Past this many buckets in memory, those idle for a hold period are forgotten."""
AHEAD_FROM_BATCH = 4
"""Batches smaller than this are never reserved ahead (a burst under 40 stays exact per token)."""


class RateLimiter:
    def __init__(self, settings: Settings, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.hold = settings.rate_limit_hold_seconds
        self._reserves: dict[str, _Reserve] = {}
        postgres = db.dialect == "postgresql"
        self._take_one = _upsert(postgres, batch=False)
        self._take_batch = _upsert(postgres, batch=True)
        self._writer: tuple[Database, AsyncEngine] | None = None
        self._sql: dict[int, tuple[Database, Any]] = {}

    def limits_for(self, plan: str | None) -> PlanRateLimit:
        limits = self.settings.rate_limits
        return limits.get(plan or "", limits[self.settings.default_plan])

    async def check(self, principal: Principal, plan: str | None) -> BucketState | None:
        """Take this request's tokens; raise RateLimited (its state attached) when out of them.
        None for callers no limit applies to. ``plan`` is the tenant's, read by the caller."""
        if not self.settings.rate_limits_enabled or principal.tenant_id is None:
            return None
        credential = (
            f"key:{principal.key_id}" if principal.key_id else f"user:{principal.tenant_id}:{principal.subject}"
        )
        return await self._check(credential, f"tenant:{principal.tenant_id}", self.limits_for(plan))

    async def check_instance(self, instance_id: str, tenant_id: str, plan: str | None) -> BucketState | None:
        """The same for an instance exporting telemetry with its own token: its own credential bucket
        and a tenant bucket of telemetry apart from the tenant's API bucket, both sized by the plan,
        so that a chatty instance is held to its plan without spending its tenant's API calls."""
        if not self.settings.rate_limits_enabled:
            return None
        return await self._check(f"instance:{instance_id}", f"telemetry:{tenant_id}", self.limits_for(plan))

    async def check_node(self, key: str) -> BucketState | None:
        """The same for a node's calls (keyed by its credential) or a registration (keyed by the
        client's address): one bucket the size of the default plan's credential bucket."""
        if not self.settings.rate_limits_enabled:
            return None
        limits = self.limits_for(None)
        state = await self._take(key, limits.credential_burst, limits.credential_per_minute)
        if not state.allowed:
            error = RateLimited(
                f"rate limit exceeded; retry in {state.retry_after_seconds} s",
                details={"limit": state.limit, "retry_after_seconds": state.retry_after_seconds},
            )
            error.rate_limit = state  # type: ignore[attr-defined]
            raise error
        return state

    async def _check(self, credential: str, tenant: str, limits: PlanRateLimit) -> BucketState:
        key_state = self._take_held(credential, limits.credential_burst, limits.credential_per_minute)
        if key_state is None:
            key_state = await self._take(credential, limits.credential_burst, limits.credential_per_minute)
        refused = key_state if not key_state.allowed else None
        state = key_state
        if refused is None:
            tenant_state = self._take_held(tenant, limits.tenant_burst, limits.tenant_per_minute)
            if tenant_state is None:
                tenant_state = await self._take(tenant, limits.tenant_burst, limits.tenant_per_minute)
            if not tenant_state.allowed:
                refused = tenant_state
            else:
                fewer, other = tenant_state.remaining, state.remaining
                if fewer < other or (fewer == other and tenant_state.reset_seconds > state.reset_seconds):
                    state = tenant_state
        if refused is not None:
            error = RateLimited(
                f"rate limit exceeded; retry in {refused.retry_after_seconds} s",
                details={"limit": refused.limit, "retry_after_seconds": refused.retry_after_seconds},
            )
            error.rate_limit = refused  # type: ignore[attr-defined]
            raise error
        return state

    def _reserve_of(self, key: str, now: float) -> _Reserve:
        reserve = self._reserves.get(key)
        if reserve is None:
            if len(self._reserves) >= MAX_RESERVES:
                idle = [
                    k
                    for k, r in self._reserves.items()
                    if r.lapses_at + self.hold < now and not r.lock.locked() and r.ahead is None
                ]
                for stale in idle:
                    del self._reserves[stale]
            reserve = self._reserves[key] = _Reserve(period_started=now)
        return reserve

    def _take_held(self, key: str, burst: int, per_minute: int) -> BucketState | None:
        """``_take`` without awaiting anything, when this replica holds a token of the bucket and no
        reservation is under way; None when it must reserve (or wait for one)."""
        reserve = self._reserves.get(key)
        if reserve is None or reserve.lock.locked():
            return None
        now = self.clock()
        if now - reserve.period_started >= self.hold or now >= reserve.lapses_at:
            if not self._settle(reserve, now):
                return None
        elif reserve.tokens < 1.0:
            return None
        rate = per_minute / 60.0
        state = self._spend(reserve, burst, rate, now)
        self._reserve_ahead(key, reserve, burst, rate)
        return state

    async def _take(self, key: str, burst: int, per_minute: int) -> BucketState:
        rate = per_minute / 60.0
        reserve = self._reserve_of(key, self.clock())
        async with reserve.lock:
            if reserve.ahead is not None:
                await asyncio.shield(reserve.ahead)
            now = self.clock()
            if not self._settle(reserve, now):
                batch = self._batch(reserve, burst)
                await self._reserve(key, reserve, burst, rate, batch, batch, now)
            return self._spend(reserve, burst, rate, now)

    def _batch(self, reserve: _Reserve, burst: int) -> int:
        """How many tokens the bucket's next reservation asks for: what it spent lately, capped."""
        cap = max(1, min(self.settings.rate_limit_batch, burst // 10))
        return max(1, min(cap, reserve.spent + reserve.spent_before))

    async def _reserve(
        self, key: str, reserve: _Reserve, burst: int, rate: float, want: int, batch: int, now: float
    ) -> None:
        """Take ``want`` tokens (or one) towards a batch of ``batch``."""
        taken, shared = await self._debit(key, burst, rate, want, now)
        reserve.tokens += taken
        reserve.batch = batch
        reserve.shared, reserve.shared_at, reserve.lapses_at = shared, now, now + self.hold

    def _reserve_ahead(self, key: str, reserve: _Reserve, burst: int, rate: float) -> None:
        """Start topping the bucket up to a batch when it holds under a quarter of one, so that its
        requests spend what is left instead of waiting for the round trip."""
        if reserve.batch < AHEAD_FROM_BATCH or reserve.ahead is not None or reserve.tokens * 4 >= reserve.batch:
            return
        batch = self._batch(reserve, burst)
        want = batch - math.floor(reserve.tokens)
        if want < 1:
            return
        reserve.ahead = asyncio.get_running_loop().create_task(self._ahead(key, reserve, burst, rate, want, batch))

    async def _ahead(self, key: str, reserve: _Reserve, burst: int, rate: float, want: int, batch: int) -> None:
        try:
            await self._reserve(key, reserve, burst, rate, want, batch, self.clock())
        except (SQLAlchemyError, OSError) as exc:  # the next request to find the bucket empty reserves, or is a 503
            log.warning("rate_limit_reserve_ahead_failed", bucket=key, error=str(exc))
        finally:
            reserve.ahead = None

    async def drain(self) -> None:
        """Wait for the reservations ahead under way (before the database closes)."""
        pending = [reserve.ahead for reserve in self._reserves.values() if reserve.ahead is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _settle(self, reserve: _Reserve, now: float) -> bool:
        """Roll the hold periods and lapse what was held too long; whether a token is left."""
        if now - reserve.period_started >= self.hold:
            recent = now - reserve.period_started < 2 * self.hold
            reserve.spent_before = reserve.spent if recent else 0
            reserve.spent, reserve.period_started = 0, now
        if now >= reserve.lapses_at:
            reserve.tokens = 0.0
        return reserve.tokens >= 1.0

    @staticmethod
    def _spend(reserve: _Reserve, burst: int, rate: float, now: float) -> BucketState:
        allowed = reserve.tokens >= 1.0
        if allowed:
            reserve.tokens -= 1.0
            reserve.spent += 1
        shared_now = min(burst, reserve.shared + max(0.0, now - reserve.shared_at) * rate)
        return BucketState(burst, min(burst, reserve.tokens + shared_now), rate, allowed)

    async def _debit(self, key: str, burst: int, rate: float, want: int, now: float) -> tuple[float, float]:
        """Take ``want`` tokens from the row, or else one, or else none: (taken, the row's tokens left)."""
        values = {"key": key, "burst": float(burst), "rate": rate, "now": now, "want": float(want)}
        if self.db.dialect == "sqlite":
            return await self._debit_sqlite(values, want)
        async with self._write_engine().begin() as connection:
            if self.db.dialect == "postgresql":
                # a bucket is soft state: losing its last updates in a database crash only refills
                # it early, so its commit need not wait for the WAL flush (every request of the
                # bucket on this replica waits for this reservation)
                await connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
            if want > 1:
                row = (await connection.execute(self._take_batch, values)).first()
                if row is not None:
                    return float(want), max(0.0, float(row.tokens))
            tokens, allowed = (await connection.execute(self._take_one, values)).one()
            return (1.0 if allowed else 0.0), max(0.0, float(tokens))

    async def _debit_sqlite(self, values: dict[str, Any], want: int) -> tuple[float, float]:
        """``_debit`` on SQLite, its statements sent to the driver as compiled once: through
        SQLAlchemy each of them was several hops to aiosqlite's thread (a cursor made, run, fetched,
        closed), about 0.7 ms of CPU a reservation against 0.2 ms (one hop each)."""
        async with self._write_engine().connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            statement, params = "BEGIN IMMEDIATE", None
            try:
                await raw.execute_fetchall(statement)
                if want > 1:
                    statement, params = self._compiled(self._take_batch, values)
                    rows = await raw.execute_fetchall(statement, params)
                    if rows:
                        await raw.commit()
                        return float(want), max(0.0, float(rows[0][0]))
                statement, params = self._compiled(self._take_one, values)
                ((tokens, allowed),) = await raw.execute_fetchall(statement, params)
                await raw.commit()
                return (1.0 if allowed else 0.0), max(0.0, float(tokens))
            except sqlite3.Error as exc:
                if raw.in_transaction:
                    await raw.rollback()
                raise DBAPIError.instance(statement, params, exc, sqlite3.Error) from exc

    def _compiled(self, upsert: Any, values: dict[str, Any]) -> tuple[str, list[Any]]:
        """The upsert's SQL for this database and its positional parameters for ``values``."""
        compiled = self._sql.get(id(upsert))
        if compiled is None or compiled[0] is not self.db:
            compiled = self._sql[id(upsert)] = (self.db, upsert.compile(dialect=self.db.engine.dialect))
        bound = compiled[1].construct_params(values)
        return str(compiled[1]), [bound[name] for name in compiled[1].positiontup]

    def _write_engine(self) -> AsyncEngine:
        """The database's engine for writes (on SQLite its transactions begin IMMEDIATE), made once
        per ``db``: a Core connection, no ORM session, for one statement."""
        if self._writer is None or self._writer[0] is not self.db:
            self._writer = (self.db, self.db.engine.execution_options(ctrlplane_write=True))
        return self._writer[1]


def _upsert(postgres: bool, *, batch: bool) -> Any:
    """The one upsert that refills the row to ``now`` and takes ``want`` tokens, built once with
    bound parameters (``key``, ``burst``, ``rate``, ``now``, ``want``). Taking one token it always
    answers (``allowed`` says whether it was taken); a batch updates, and answers, only when the
    row holds it all."""
    least: Any = func.least if postgres else func.min
    greatest: Any = func.greatest if postgres else func.max
    insert = pg_insert if postgres else sqlite_insert
    burst, rate = bindparam("burst", type_=Float), bindparam("rate", type_=Float)
    now, want = bindparam("now", type_=Float), bindparam("want", type_=Float)
    table: Any = RateBucket.__table__
    elapsed = greatest(0.0, now - table.c.refilled_at)  # another replica's clock may be ahead
    refilled = least(burst, table.c.tokens + elapsed * rate)
    refilled_at = greatest(table.c.refilled_at, now)
    taken: Any = want if batch else 1.0
    if batch:
        set_ = {"tokens": refilled - want, "refilled_at": refilled_at, "allowed": True}
        where = refilled >= want
    else:
        set_ = {
            "tokens": case((refilled >= 1.0, refilled - 1.0), else_=refilled),
            "refilled_at": refilled_at,
            "allowed": refilled >= 1.0,
        }
        where = None
    return (
        insert(table)
        .values(key=bindparam("key", type_=String), tokens=burst - taken, refilled_at=now, allowed=True)
        .on_conflict_do_update(index_elements=[table.c.key], set_=set_, where=where)
        .returning(table.c.tokens, table.c.allowed)
    )
