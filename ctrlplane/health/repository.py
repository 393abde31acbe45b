from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import NotFound
from ctrlplane.health.models import HealthCheck, HealthCheckResult
from ctrlplane.ids import TenantId


class HealthRepository:
    """Every health-check query, scoped to one tenant; ``tenant_id=None`` only for system admins."""

    def __init__(self, session: AsyncSession, tenant_id: TenantId | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self) -> Select[HealthCheck]:
        statement = select(HealthCheck)
        if self.tenant_id is not None:
            statement = statement.where(HealthCheck.tenant_id == self.tenant_id)
        return statement

    async def get(self, check_id: str, *, for_update: bool = False) -> HealthCheck:
        statement = self._scoped().where(HealthCheck.id == check_id)
        if for_update:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        check = (await self.session.execute(statement)).scalar_one_or_none()
        if check is None:
            raise NotFound.of("health check", check_id)
        return check

    def of_instance(self, instance_id: str) -> Select[HealthCheck]:
        return self._scoped().where(HealthCheck.instance_id == instance_id)

    async def all_of_instance(self, instance_id: str) -> list[HealthCheck]:
        statement = self.of_instance(instance_id).order_by(HealthCheck.id)
        return list((await self.session.execute(statement)).scalars())

    async def oldest_first(self, instance_id: str) -> list[HealthCheck]:
        statement = self.of_instance(instance_id).order_by(HealthCheck.created_at, HealthCheck.id)
        return list((await self.session.execute(statement)).scalars())

    async def name_taken(self, instance_id: str, name: str) -> bool:
        statement = select(HealthCheck.id).where(HealthCheck.instance_id == instance_id, HealthCheck.name == name)
        return (await self.session.execute(statement)).first() is not None

    async def count_of_instance(self, instance_id: str) -> int:
        statement = select(func.count()).select_from(HealthCheck).where(HealthCheck.instance_id == instance_id)
        return int((await self.session.execute(statement)).scalar_one())

    async def latest_result(self, check_id: str) -> HealthCheckResult | None:
        statement = (
            select(HealthCheckResult)
            .where(HealthCheckResult.check_id == check_id)
            .order_by(HealthCheckResult.checked_at.desc(), HealthCheckResult.id.desc())
            .limit(1)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def pass_counts(self, check_ids: list[str], since: datetime) -> dict[str, tuple[int, int]]:
        """Per check: (passing runs, all runs) checked at or after ``since``."""
        if not check_ids:
            return {}
        statement = (
            select(
                HealthCheckResult.check_id,
                func.sum(case((HealthCheckResult.status == "pass", 1), else_=0)),
                func.count(),
            )
            .where(HealthCheckResult.check_id.in_(check_ids), HealthCheckResult.checked_at >= since)
            .group_by(HealthCheckResult.check_id)
        )
        rows = (await self.session.execute(statement)).all()
        return {check_id: (int(passed or 0), int(total)) for check_id, passed, total in rows}
