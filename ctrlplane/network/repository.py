from __future__ import annotations

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import NotFound
from ctrlplane.ids import TenantId
from ctrlplane.instances.models import Instance
from ctrlplane.network.models import Certificate, Domain, Route
from ctrlplane.timeutil import utc_now

LIVE_INSTANCE = Instance.state != "destroyed"


class NetworkRepository:
    """Every route, domain and certificate query, scoped to one tenant (``None`` only for system
    admins). The one unscoped query, ``hostname_holder``, answers whether a hostname is taken anywhere,
    because hostnames are unique across tenants; it never returns another tenant's domain to a caller."""

    def __init__(self, session: AsyncSession, tenant_id: TenantId | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _routes(self) -> Select[Route]:
        statement = select(Route)
        if self.tenant_id is not None:
            statement = statement.where(Route.tenant_id == self.tenant_id)
        return statement

    def _domains(self) -> Select[Domain]:
        statement = select(Domain)
        if self.tenant_id is not None:
            statement = statement.where(Domain.tenant_id == self.tenant_id)
        return statement

    async def route(self, route_id: str, *, for_update: bool = False) -> Route:
        statement = self._routes().where(Route.id == route_id)
        if for_update:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        route = (await self.session.execute(statement)).scalar_one_or_none()
        if route is None:
            raise NotFound.of("route", route_id)
        return route

    def routes_of(self, instance_id: str) -> Select[Route]:
        return self._routes().where(Route.instance_id == instance_id)

    async def routes_on_path(self, instance_id: str, path: str) -> list[Route]:
        statement = select(Route).where(Route.instance_id == instance_id, Route.path == path)
        return list((await self.session.execute(statement)).scalars())

    async def route_count(self, tenant_id: str) -> int:
        statement = (
            select(func.count(Route.id))
            .join(Instance, Instance.id == Route.instance_id)
            .where(Route.tenant_id == tenant_id, LIVE_INSTANCE)
        )
        return int((await self.session.execute(statement)).scalar_one())

    async def domain(self, domain_id: str, *, for_update: bool = False) -> Domain:
        statement = self._domains().where(Domain.id == domain_id)
        if for_update:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        domain = (await self.session.execute(statement)).scalar_one_or_none()
        if domain is None:
            raise NotFound.of("domain", domain_id)
        return domain

    def domains_of(self, instance_id: str) -> Select[Domain]:
        return self._domains().where(Domain.instance_id == instance_id)

    async def domain_count(self, tenant_id: str) -> int:
        statement = (
            select(func.count(Domain.id))
            .join(Instance, Instance.id == Domain.instance_id)
            .where(Domain.tenant_id == tenant_id, LIVE_INSTANCE)
        )
        return int((await self.session.execute(statement)).scalar_one())

    async def hostname_holder(self, hostname: str) -> tuple[Domain, str] | None:
        """The verified domain holding ``hostname`` in any tenant, with its instance's state.
        Pending claims hold nothing: several tenants may have one for the same hostname."""
        statement = (
            select(Domain, Instance.state)
            .join(Instance, Instance.id == Domain.instance_id)
            .where(Domain.hostname == hostname, Domain.status == "verified")
        )
        row = (await self.session.execute(statement)).first()
        return (row[0], row[1]) if row is not None else None

    async def own_claim(self, tenant_id: str, hostname: str) -> Domain | None:
        """The tenant's unverified claim of ``hostname``, if any."""
        statement = select(Domain).where(
            Domain.tenant_id == tenant_id, Domain.hostname == hostname, Domain.status != "verified"
        )
        return (await self.session.execute(statement.limit(1))).scalars().first()

    async def supersede_claims(self, hostname: str, winner_id: str) -> int:
        """Every other unverified claim of ``hostname`` (any tenant's) lost to ``winner_id``."""
        outcome = await self.session.execute(
            update(Domain)
            .where(Domain.hostname == hostname, Domain.id != winner_id, Domain.status == "pending")
            .values(status="superseded", version=Domain.version + 1, updated_at=utc_now())
        )
        return int(outcome.rowcount or 0)  # type: ignore[attr-defined]

    async def certificates(self, domain_ids: list[str]) -> dict[str, Certificate]:
        if not domain_ids:
            return {}
        statement = select(Certificate).where(Certificate.domain_id.in_(domain_ids))
        return {c.domain_id: c for c in (await self.session.execute(statement)).scalars()}

    async def certificate(self, domain_id: str, *, for_update: bool = False) -> Certificate | None:
        statement = select(Certificate).where(Certificate.domain_id == domain_id)
        if for_update:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        return (await self.session.execute(statement)).scalar_one_or_none()
