from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import NotFound
from ctrlplane.tenants.models import Tenant, TenantQuota


class TenantRepository:
    """Tenants are the scoping unit themselves; only system admins reach this repository's callers."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, tenant_id: str, *, for_update: bool = False) -> Tenant:
        statement = select(Tenant).where(Tenant.id == tenant_id)
        if for_update:
            statement = statement.with_for_update(key_share=True)
        tenant = (await self.session.execute(statement)).scalar_one_or_none()
        if tenant is None:
            raise NotFound.of("tenant", tenant_id)
        return tenant

    async def slug_taken(self, slug: str) -> bool:
        return (await self.session.execute(select(Tenant.id).where(Tenant.slug == slug))).first() is not None

    def listing(self, status: str | None) -> Select[Tenant]:
        statement = select(Tenant)
        if status is not None:
            statement = statement.where(Tenant.status == status)
        return statement

    async def remove(self, tenant: Tenant) -> None:
        """Delete a tenant whose instances are all destroyed and forgotten (``instances.lifecycle.
        forget_tenant``); its audit chain and events stay: they are history."""
        await self.session.delete(tenant)

    async def deleting(self) -> list[Tenant]:
        """Tenants being deleted: the reconciler removes each once its instances are destroyed."""
        return list((await self.session.execute(select(Tenant).where(Tenant.status == "deleting"))).scalars())

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.session.execute(select(Tenant.status, func.count()).group_by(Tenant.status))
        return {status: int(count) for status, count in rows.all()}

    async def quota(self, tenant_id: str) -> TenantQuota:
        quota = await self.session.get(TenantQuota, tenant_id)
        if quota is None:
            raise NotFound.of("quota", tenant_id)
        return quota

    async def runtime(self, tenant_id: str) -> tuple[str, tuple[int, int, int] | None] | None:
        """The tenant's slug and the limits a runtime enforces for it (instances, CPU millis, memory
        MB; None: no quota row), for its instances' workload specs (``operations/spec.py``); None
        when the tenant is gone."""
        row = (
            await self.session.execute(
                select(Tenant.slug, TenantQuota.max_instances, TenantQuota.max_cpu_millis, TenantQuota.max_memory_mb)
                .outerjoin(TenantQuota, TenantQuota.tenant_id == Tenant.id)
                .where(Tenant.id == tenant_id)
            )
        ).first()
        if row is None:
            return None
        return row[0], (row[1], row[2], row[3]) if row[1] is not None else None
