from __future__ import annotations

from typing import Any

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import NotFound
from ctrlplane.ids import TenantId
from ctrlplane.instances.models import Instance

LIVE = Instance.state != "destroyed"
_TABLE = Instance.__table__
_VIEW = select(_TABLE).where(_TABLE.c.tenant_id == bindparam("tenant_id"), _TABLE.c.id == bindparam("id"))
"""``GET /v1/instances/{id}``'s statement, built once and run on the Core connection: building it
per request, and loading an ORM object to convert it, cost about as much as the query itself
(tests/profile_request.py)."""


class InstanceRepository:
    """Every instance query, scoped to one tenant; ``tenant_id=None`` only for system admins."""

    def __init__(self, session: AsyncSession, tenant_id: TenantId | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self) -> Select[Instance]:
        statement = select(Instance)
        if self.tenant_id is not None:
            statement = statement.where(Instance.tenant_id == self.tenant_id)
        return statement

    async def view(self, instance_id: str) -> Any:
        """The instance's row, read-only (its columns as attributes, as the ORM object has them)."""
        if self.tenant_id is None:
            return await self.get(instance_id)
        connection = await self.session.connection()
        row = (await connection.execute(_VIEW, {"tenant_id": self.tenant_id, "id": instance_id})).one_or_none()
        if row is None:
            raise NotFound.of("instance", instance_id)
        return row

    async def get(self, instance_id: str, *, for_update: bool = False) -> Instance:
        statement = self._scoped().where(Instance.id == instance_id)
        if for_update:
            statement = statement.with_for_update(key_share=True).execution_options(populate_existing=True)
        instance = (await self.session.execute(statement)).scalar_one_or_none()
        if instance is None:
            raise NotFound.of("instance", instance_id)
        return instance

    async def name_taken(self, tenant_id: str, name: str, *, except_id: str | None = None) -> bool:
        statement = select(Instance.id).where(Instance.tenant_id == tenant_id, Instance.name == name, LIVE)
        if except_id is not None:
            statement = statement.where(Instance.id != except_id)
        return (await self.session.execute(statement)).first() is not None

    def listing(
        self,
        *,
        state: str | None,
        labels: dict[str, str],
        provider: str | None,
        name: str | None,
        include_destroyed: bool,
    ) -> Select[Instance]:
        statement = self._scoped()
        if state is not None:
            statement = statement.where(Instance.state == state)
        elif not include_destroyed:
            statement = statement.where(LIVE)
        if provider is not None:
            statement = statement.where(Instance.provider_name == provider)
        if name is not None:
            statement = statement.where(Instance.name == name)
        for key, value in labels.items():
            statement = statement.where(Instance.labels[key].as_string() == value)
        return statement

    async def live_for_tenant(self, tenant_id: str, *, for_update: bool = False) -> list[Instance]:
        statement = select(Instance).where(Instance.tenant_id == tenant_id, LIVE).order_by(Instance.id)
        if for_update:
            statement = statement.with_for_update(key_share=True).execution_options(populate_existing=True)
        return list((await self.session.execute(statement)).scalars())

    async def usage(self, tenant_id: str, *, except_id: str | None = None) -> tuple[int, int, int]:
        """Live instances, and the CPU and memory they reserve (per replica times replicas)."""
        statement = select(
            func.count(Instance.id),
            func.coalesce(func.sum(Instance.cpu_millis * Instance.replicas), 0),
            func.coalesce(func.sum(Instance.memory_mb * Instance.replicas), 0),
        ).where(Instance.tenant_id == tenant_id, LIVE)
        if except_id is not None:
            statement = statement.where(Instance.id != except_id)
        count, cpu, memory = (await self.session.execute(statement)).one()
        return int(count), int(cpu), int(memory)

    async def count_by_state(self) -> dict[str, int]:
        rows = await self.session.execute(select(Instance.state, func.count()).group_by(Instance.state))
        return {state: int(count) for state, count in rows.all()}
