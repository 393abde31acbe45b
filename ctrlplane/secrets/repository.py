from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.ids import TenantId
from ctrlplane.instances.models import Instance
from ctrlplane.secrets.models import Secret, SecretVersion


class SecretRepository:
    """Every secrets query. Callers reach an instance's secrets only through an instance they got
    from the tenant-scoped ``InstanceRepository``; queries here are scoped by that instance and its
    tenant both."""

    def __init__(self, session: AsyncSession, tenant_id: TenantId) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def listing(self, instance_id: str) -> Select[Secret]:
        return select(Secret).where(Secret.tenant_id == self.tenant_id, Secret.instance_id == instance_id)

    async def current(self, instance_id: str, key: str) -> Secret | None:
        statement = self.listing(instance_id).where(Secret.key == key)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def count_for_tenant(self) -> int:
        """The tenant's secrets on instances not yet destroyed (what ``max_secrets`` limits)."""
        live = select(Instance.id).where(Instance.tenant_id == self.tenant_id, Instance.state != "destroyed")
        statement = (
            select(func.count())
            .select_from(Secret)
            .where(Secret.tenant_id == self.tenant_id, Secret.instance_id.in_(live))
        )
        return int((await self.session.execute(statement)).scalar_one())

    async def latest_revision(self, instance_id: str) -> int:
        statement = select(func.max(SecretVersion.revision)).where(SecretVersion.instance_id == instance_id)
        return int((await self.session.execute(statement)).scalar_one() or 0)

    async def latest_version(self, instance_id: str, key: str) -> int:
        statement = select(func.max(SecretVersion.version)).where(
            SecretVersion.instance_id == instance_id, SecretVersion.key == key
        )
        return int((await self.session.execute(statement)).scalar_one() or 0)

    async def as_of(self, instance_id: str, revision: int) -> list[SecretVersion]:
        """Per key, the newest version at or below ``revision``, deletions left out."""
        newest = (
            select(SecretVersion.key, func.max(SecretVersion.revision).label("revision"))
            .where(
                SecretVersion.tenant_id == self.tenant_id,
                SecretVersion.instance_id == instance_id,
                SecretVersion.revision <= revision,
            )
            .group_by(SecretVersion.key)
            .subquery()
        )
        statement = (
            select(SecretVersion)
            .join(
                newest,
                (SecretVersion.key == newest.c.key) & (SecretVersion.revision == newest.c.revision),
            )
            .where(SecretVersion.instance_id == instance_id, SecretVersion.sealed_value.is_not(None))
            .order_by(SecretVersion.key)
        )
        return list((await self.session.execute(statement)).scalars())
