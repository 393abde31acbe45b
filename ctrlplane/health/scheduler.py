"""The health scheduler: runs every enabled check at its interval, and prunes old results.

Every ``CTRLPLANE_HEALTH_TICK_SECONDS`` it **claims** the checks that are due, in one short write
transaction: enabled, ``next_run_at`` passed, of an instance meant to run (state ``running`` or
``failed``) with no operation queued or running (a deploy's gate, or the operation, owns the
instance meanwhile). Claiming moves ``next_run_at`` one interval ahead, give or take
``CTRLPLANE_HEALTH_JITTER`` of it, so checks created together drift apart, and so another server
on the same database (PostgreSQL: ``FOR UPDATE SKIP LOCKED``) does not run the same check. It
claims no more than it has free slots.

Each claimed check runs as its own task under a ``CapacityLimiter`` of
``CTRLPLANE_HEALTH_CONCURRENCY``, with its own timeout, and no transaction open: a slow check holds
one slot, never the loop or the other checks. Its outcome is recorded with ``record_outcome`` in a
transaction of its own that locks the check (a check deleted meanwhile is skipped). A provider that
does not answer records nothing: that says nothing about the application.

About every ``CTRLPLANE_HEALTH_PRUNE_INTERVAL_SECONDS`` it deletes results older than
``CTRLPLANE_HEALTH_RESULT_RETENTION`` and, per check, all but the newest
``CTRLPLANE_HEALTH_RESULTS_PER_CHECK``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
import structlog
from anyio.abc import TaskGroup
from sqlalchemy import delete, func, select

from ctrlplane.db import Database, written_tables
from ctrlplane.errors import CtrlplaneError, ProviderUnavailable
from ctrlplane.health.models import HealthCheck, HealthCheckResult
from ctrlplane.health.probes import Outcome, Target, parse_target, run_check
from ctrlplane.health.service import RUNNABLE_STATES, record_outcome, secrets_to_redact
from ctrlplane.instances.models import Instance
from ctrlplane.operations import queue
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.health")


@dataclass(frozen=True)
class Claimed:
    check_id: str
    instance_id: str
    tenant_id: str
    provider_name: str
    generation: int
    target: Target
    timeout_seconds: float


def next_run(now: datetime, interval_seconds: float, jitter: float) -> datetime:
    return now + timedelta(seconds=interval_seconds * (1 + random.uniform(-jitter, jitter)))


class HealthScheduler:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.settings = services.settings
        self.limiter = anyio.CapacityLimiter(self.settings.health_concurrency)
        self.in_flight: set[str] = set()
        self._last_prune = 0.0

    async def run_forever(self) -> None:
        async with anyio.create_task_group() as group:
            while True:
                try:
                    await self.tick(group)
                except Exception as exc:
                    log.error("health_scheduler_error", exc_info=exc)
                await anyio.sleep(self.settings.health_tick_seconds)

    async def tick(self, group: TaskGroup) -> None:
        free = self.settings.health_concurrency - len(self.in_flight)
        if free > 0:
            for claimed in await self.claim_due(free):
                self.in_flight.add(claimed.check_id)
                group.start_soon(self._run, claimed)
        if time.monotonic() - self._last_prune >= self.settings.health_prune_interval_seconds:
            self._last_prune = time.monotonic()
            await prune_results(
                self.services.db,
                retention_seconds=self.settings.health_result_retention_seconds,
                per_check=self.settings.health_results_per_check,
            )

    async def claim_due(self, limit: int) -> list[Claimed]:
        now = utc_now()
        busy = queue.busy_instances()
        due = (
            HealthCheck.enabled.is_(True),
            HealthCheck.next_run_at <= now,
            HealthCheck.id.not_in(self.in_flight) if self.in_flight else HealthCheck.id.is_not(None),
            Instance.desired_state == "running",
            Instance.state.in_(RUNNABLE_STATES),
            Instance.id.not_in(busy),
        )
        async with self.services.db.read() as session:
            # Most ticks find nothing due: ask in a read session first, so an idle scheduler never
            # takes the write lock (SQLite) or row locks (PostgreSQL).
            any_due = select(HealthCheck.id).join(Instance, Instance.id == HealthCheck.instance_id).where(*due)
            if (await session.execute(any_due.limit(1))).first() is None:
                return []
        statement = (
            select(HealthCheck, Instance.provider_name, Instance.generation)
            .join(Instance, Instance.id == HealthCheck.instance_id)
            .where(*due)
            .order_by(HealthCheck.next_run_at)
            .limit(limit)
            .with_for_update(of=HealthCheck, skip_locked=True)
        )
        claimed: list[Claimed] = []
        async with self.services.db.write() as session, session.begin():
            for check, provider_name, generation in (await session.execute(statement)).all():
                check.next_run_at = next_run(now, check.interval_seconds, self.settings.health_jitter)
                try:
                    target = parse_target(check.type, check.target)
                except ValueError:
                    log.warning("health_check_target_invalid", check=check.id, target=check.target)
                    continue
                claimed.append(
                    Claimed(
                        check.id,
                        check.instance_id,
                        check.tenant_id,
                        provider_name,
                        generation,
                        target,
                        check.timeout_seconds,
                    )
                )
        return claimed

    async def _run(self, claimed: Claimed) -> None:
        try:
            async with self.limiter:
                outcome = await self.probe(claimed)
                if outcome is not None:
                    await self.record(claimed.check_id, outcome)
        except Exception as exc:
            log.error("health_check_error", check=claimed.check_id, exc_info=exc)
        finally:
            self.in_flight.discard(claimed.check_id)

    async def probe(self, claimed: Claimed) -> Outcome | None:
        try:
            provider = self.services.providers.get(claimed.provider_name)
            secrets = (
                await secrets_to_redact(self.services, tenant_id=claimed.tenant_id, instance_id=claimed.instance_id)
                if claimed.target.type == "command"
                else []
            )
            return await run_check(
                provider,
                claimed.instance_id,
                claimed.generation,
                claimed.target,
                timeout=claimed.timeout_seconds,
                secrets=secrets,
            )
        except ProviderUnavailable as exc:
            log.info("health_check_skipped", check=claimed.check_id, reason=exc.message)
            return None
        except CtrlplaneError as exc:
            return Outcome(ok=False, latency_ms=0.0, message=exc.message)

    async def record(self, check_id: str, outcome: Outcome) -> None:
        async with self.services.db.write() as session, session.begin():
            check = await session.get(HealthCheck, check_id, with_for_update=True, populate_existing=True)
            if check is None:
                return
            await record_outcome(session, check, outcome, manual=False)
            written = await written_tables(session)
        await self.services.events.notify(written)


async def prune_results(db: Database, *, retention_seconds: float, per_check: int) -> int:
    """Delete results past the retention period and, per check, beyond the newest ``per_check``;
    the number deleted."""
    deleted = 0
    cutoff = utc_now() - timedelta(seconds=retention_seconds)
    async with db.write() as session, session.begin():
        outcome = await session.execute(delete(HealthCheckResult).where(HealthCheckResult.checked_at < cutoff))
        deleted += int(outcome.rowcount or 0)  # type: ignore[attr-defined]
        crowded = (
            await session.execute(
                select(HealthCheckResult.check_id).group_by(HealthCheckResult.check_id).having(func.count() > per_check)
            )
        ).scalars()
        for check_id in list(crowded):
            oldest_kept = (
                await session.execute(
                    select(HealthCheckResult.checked_at)
                    .where(HealthCheckResult.check_id == check_id)
                    .order_by(HealthCheckResult.checked_at.desc())
                    .offset(per_check - 1)
                    .limit(1)
                )
            ).scalar_one()
            outcome = await session.execute(
                delete(HealthCheckResult).where(
                    HealthCheckResult.check_id == check_id, HealthCheckResult.checked_at < oldest_kept
                )
            )
            deleted += int(outcome.rowcount or 0)  # type: ignore[attr-defined]
    return deleted
