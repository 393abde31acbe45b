from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, Text, bindparam, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import NotFound
from ctrlplane.ids import TenantId
from ctrlplane.instances.models import Instance
from ctrlplane.tenants.models import Tenant
from ctrlplane.web.pagination import Listing

LIVE = Instance.state != "destroyed"
_TABLE = Instance.__table__
_VIEW = select(_TABLE).where(_TABLE.c.tenant_id == bindparam("tenant_id"), _TABLE.c.id == bindparam("id"))
"""``GET /v1/instances/{id}``'s statement, built once and run on the Core connection: building it
per request, and loading an ORM object to convert it, cost about as much as the query itself
(tests/profile_request.py)."""
_TENANTS = Tenant.__table__
_UNLISTED = ("generation", "recent_restarts", "suspended_by", "resume_state")
LISTED_JSON = ("ports", "env", "labels", "endpoints", "release_command")
"""Columns a listing returns as their JSON text, decoded by the caller (``service.listed``):
msgspec decodes straight into the view's types, where the ORM's ``json.loads`` and a
``msgspec.convert`` per port and endpoint cost more than the query (tests/profile_request.py)."""
_LISTED = (
    *(cast(c, Text).label(c.key) if c.key in LISTED_JSON else c for c in _TABLE.c if c.key not in _UNLISTED),
    _TENANTS.c.slug.label("tenant_slug"),
)
"""A listed instance's columns but the workers' own (what its view shows), and its tenant's slug
(for its hostname)."""


def _listing(where: list[ColumnElement[bool]]) -> Listing:
    page = select(*_LISTED).join_from(_TABLE, _TENANTS, _TENANTS.c.id == _TABLE.c.tenant_id).where(*where)
    return Listing(page, select(func.count()).select_from(_TABLE).where(*where), _TABLE.c.id)


_LIVE = [_TABLE.c.tenant_id == bindparam("tenant_id"), _TABLE.c.state != "destroyed"]
_LIVE_LISTING = _listing(_LIVE)
"""``GET /v1/instances`` without filters, a tenant's: built once (``pagination.Listing``)."""


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

    def is_live_listing(self, listing: Listing) -> bool:
        """Whether ``listing`` is a tenant's unfiltered one, whose pages the row cache may hold."""
        return listing is _LIVE_LISTING

    def listing(
        self,
        *,
        state: str | None,
        labels: dict[str, str],
        provider: str | None,
        name: str | None,
        include_destroyed: bool,
        tenant_id: str | None = None,
    ) -> tuple[Listing, dict[str, Any]]:
        """The listing (each row with its tenant's slug, ``pagination.paginate_rows``) and the values
        it binds; ``tenant_id`` narrows a system admin's listing."""
        if (
            self.tenant_id is not None
            and tenant_id in (None, self.tenant_id)
            and (state, provider, name, labels, include_destroyed) == (None, None, None, {}, False)
        ):
            return _LIVE_LISTING, {"tenant_id": self.tenant_id}
        c = _TABLE.c
        where: list[ColumnElement[bool]] = []
        if self.tenant_id is not None:
            where.append(c.tenant_id == self.tenant_id)
        if tenant_id is not None:
            where.append(c.tenant_id == tenant_id)
        if state is not None:
            where.append(c.state == state)
        elif not include_destroyed:
            where.append(c.state != "destroyed")
        if provider is not None:
            where.append(c.provider_name == provider)
        if name is not None:
            where.append(c.name == name)
        for key, value in labels.items():
            where.append(c.labels[key].as_string() == value)
        return _listing(where), {}

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
