"""What telemetry (the dashboard, the metrics series, Prometheus) reads of health checks: the
``telemetry.health.HealthView`` the health subsystem provides. Reads only; callers pass a session
already scoped by their own tenant checks (the instance was found in the caller's tenant)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.health.models import HealthCheck, HealthCheckResult
from ctrlplane.health.service import aggregate
from ctrlplane.instances.models import Instance
from ctrlplane.telemetry.health import HealthStatus


class HealthChecksView:
    async def instance_health(self, session: AsyncSession, instance_id: str) -> HealthStatus:
        instance = await session.get(Instance, instance_id)
        if instance is None:
            return "unknown"
        checks = list(
            (await session.execute(select(HealthCheck).where(HealthCheck.instance_id == instance_id))).scalars()
        )
        status = aggregate(instance, checks)
        assert status in ("healthy", "degraded", "unhealthy", "unknown")
        return status  # type: ignore[return-value]

    async def latency(
        self, session: AsyncSession, instance_id: str, *, since: datetime, until: datetime
    ) -> Sequence[tuple[datetime, float]]:
        rows = await session.execute(
            select(HealthCheckResult.checked_at, HealthCheckResult.latency_ms)
            .where(
                HealthCheckResult.instance_id == instance_id,
                HealthCheckResult.checked_at >= since,
                HealthCheckResult.checked_at <= until,
            )
            .order_by(HealthCheckResult.checked_at)
        )
        return [(at, float(ms)) for at, ms in rows.all()]

    async def result_counts(self, session: AsyncSession) -> Mapping[str, int]:
        rows = await session.execute(select(HealthCheckResult.status, func.count()).group_by(HealthCheckResult.status))
        return {status: int(count) for status, count in rows.all()}
