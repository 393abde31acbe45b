from __future__ import annotations

from sqlalchemy import Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import NotFound
from ctrlplane.instances.models import Instance
from ctrlplane.tenants.models import Tenant, TenantQuota


class TenantRepository:
    """Tenants are the scoping unit themselves; only system admins reach this repository's callers."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, tenant_id: str, *, for_update: bool = False) -> Tenant:
        statement = select(Tenant).where(Tenant.id == tenant_id)
        if for_update:
            statement = statement.with_for_update()
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
        """Delete a tenant whose instances are all destroyed, with their records (its audit chain
        and events stay: they are history)."""
        await self.session.execute(delete(Instance).where(Instance.tenant_id == tenant.id))
        await self.session.delete(tenant)

    async def quota(self, tenant_id: str) -> TenantQuota:
        quota = await self.session.get(TenantQuota, tenant_id)
        if quota is None:
            raise NotFound.of("quota", tenant_id)
        return quota
