"""Tenants, their plans, quotas and suspension. Only system admins call this service.

Decisions (docs/api.md): the slug is immutable (later hostnames are derived from it); changing the
plan resets the quota to the new plan's defaults, while ``PUT .../quota`` sets custom limits;
deleting a tenant removes its keys and quota but keeps its audit chain; with ``?force=true`` and
live instances it becomes ``deleting`` (202) and the reconciler removes it once they are destroyed.
Suspending a tenant suspends (stops) its instances; unsuspending starts those that were running.
"""

from __future__ import annotations

import msgspec

from ctrlplane.auth.service import delete_keys_of
from ctrlplane.errors import Conflict, InvalidInput, InvalidState
from ctrlplane.ids import TenantId, new_id
from ctrlplane.instances import lifecycle
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.network.repository import NetworkRepository
from ctrlplane.secrets.repository import SecretRepository
from ctrlplane.tenants import schemas
from ctrlplane.tenants.models import Tenant, TenantQuota
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate
from ctrlplane.web.preconditions import require_version


def to_schema(tenant: Tenant) -> schemas.Tenant:
    return msgspec.convert(tenant, schemas.Tenant, from_attributes=True)


def _not_deleting(tenant: Tenant) -> None:
    if tenant.status == "deleting":
        raise InvalidState("tenant is being deleted", details={"state": tenant.status})


class TenantService:
    def __init__(self, context: RequestContext, *, if_match: str | None = None) -> None:
        self.context = context
        self.session = context.session
        self.plans = context.services.settings.plans
        self.repo = TenantRepository(context.session)
        self.if_match = if_match

    async def _locked(self, tenant_id: str) -> Tenant:
        tenant = await self.repo.get(tenant_id, for_update=True)
        # Refused or not, an action on an existing tenant is recorded in that tenant's audit chain.
        self.context.audit.tenant_id, self.context.audit.resource_id = tenant.id, tenant.id
        require_version(self.if_match, resource="tenant", resource_id=tenant.id, version=tenant.version)
        return tenant

    def _plan(self, plan: str | None) -> str:
        chosen = plan or self.context.services.settings.default_plan
        if chosen not in self.plans:
            raise InvalidInput(
                f"unknown plan {chosen!r}; available: {', '.join(sorted(self.plans))}", details={"plan": chosen}
            )
        return chosen

    def _audit(self, tenant_id: str, **details: object) -> None:
        self.context.audit.resource_id = tenant_id
        self.context.audit.tenant_id = tenant_id
        self.context.audit.details.update(details)

    async def create(self, data: schemas.TenantCreate) -> schemas.Tenant:
        plan = self._plan(data.plan)
        if await self.repo.slug_taken(data.slug):
            raise Conflict(f"slug {data.slug!r} is taken", details={"slug": data.slug})
        now = utc_now()
        tenant = Tenant(
            id=new_id("ten"),
            name=data.name,
            slug=data.slug,
            plan=plan,
            status="active",
            version=1,
            created_at=now,
            updated_at=now,
        )
        self.session.add(tenant)
        await self.session.flush()
        self.session.add(
            TenantQuota(tenant_id=tenant.id, custom=False, updated_at=now, **msgspec.structs.asdict(self.plans[plan]))
        )
        await self.session.flush()
        self._audit(tenant.id, slug=data.slug, plan=plan)
        return to_schema(tenant)

    async def list(self, *, status: str | None, cursor: str | None, limit: int) -> Page[schemas.Tenant]:
        return await paginate(
            self.session, self.repo.listing(status), Tenant.id, cursor=cursor, limit=limit, convert=to_schema
        )

    async def get(self, tenant_id: str) -> schemas.Tenant:
        return to_schema(await self.repo.get(tenant_id))

    async def update(self, tenant_id: str, data: schemas.TenantUpdate) -> schemas.Tenant:
        tenant = await self._locked(tenant_id)
        _not_deleting(tenant)
        changed: dict[str, object] = {}
        if data.name is not msgspec.UNSET:
            tenant.name = changed["name"] = data.name
        if data.plan is not msgspec.UNSET and data.plan != tenant.plan:
            tenant.plan = changed["plan"] = self._plan(data.plan)
            quota = await self.repo.quota(tenant_id)
            for field, value in msgspec.structs.asdict(self.plans[tenant.plan]).items():
                setattr(quota, field, value)
            quota.custom, quota.updated_at = False, utc_now()
            await self._quota_changed(tenant_id)
        if changed:
            tenant.version += 1
            tenant.updated_at = utc_now()
        self._audit(tenant_id, changed=sorted(changed))
        return to_schema(tenant)

    async def _quota_changed(self, tenant_id: str) -> None:
        """Runtimes that enforce the quota themselves (Kubernetes' ResourceQuota) get the new one."""
        await lifecycle.reconfigure_tenant(self.session, self.context.services.providers, TenantId(tenant_id))

    async def delete(self, tenant_id: str, *, force: bool) -> bool:
        """Delete the tenant now (True), or, with ``force`` and live instances, tear them down and
        finish the deletion once they are destroyed (False: the tenant is ``deleting``)."""
        tenant = await self._locked(tenant_id)
        if tenant.status == "deleting":
            raise InvalidState("tenant is already being deleted", details={"state": tenant.status})
        live = await self.live_resources(tenant_id)
        if any(live.values()) and not force:
            raise Conflict(
                "tenant still owns live resources; delete them first or pass ?force=true",
                details={"live": live},
            )
        await delete_keys_of(self.session, tenant_id)
        self._audit(tenant_id, force=force, live=live)
        if not await lifecycle.destroy_tenant(self.session, TenantId(tenant_id)):
            await lifecycle.forget_tenant(self.session, TenantId(tenant_id))
            await self.repo.remove(tenant)
            return True
        tenant.status = "deleting"
        tenant.version += 1
        tenant.updated_at = utc_now()
        return False

    async def live_resources(self, tenant_id: str) -> dict[str, int]:
        usage = await self.usage(tenant_id)
        return {"instances": usage.instances}

    async def usage(self, tenant_id: str) -> schemas.QuotaUsage:
        """What the tenant uses now."""
        scope = TenantId(tenant_id)  # a system admin's: every tenant is in scope
        count, cpu, memory = await InstanceRepository(self.session, scope).usage(tenant_id)
        secrets = await SecretRepository(self.session, scope).count_for_tenant()
        network = NetworkRepository(self.session, scope)
        domains, routes = await network.domain_count(tenant_id), await network.route_count(tenant_id)
        return schemas.QuotaUsage(
            instances=count, cpu_millis=cpu, memory_mb=memory, domains=domains, routes=routes, secrets=secrets
        )

    async def suspend(self, tenant_id: str, reason: str) -> schemas.Tenant:
        tenant = await self._locked(tenant_id)
        if tenant.status == "suspended":
            raise InvalidState("tenant is already suspended", details={"state": tenant.status})
        _not_deleting(tenant)
        now = utc_now()
        tenant.status, tenant.suspended_at, tenant.suspension_reason = "suspended", now, reason
        tenant.version += 1
        tenant.updated_at = now
        stopped = await lifecycle.suspend_tenant(self.session, TenantId(tenant_id), reason=reason)
        self._audit(tenant_id, reason=reason, instances=stopped)
        return to_schema(tenant)

    async def unsuspend(self, tenant_id: str, reason: str) -> schemas.Tenant:
        tenant = await self._locked(tenant_id)
        if tenant.status != "suspended":
            raise InvalidState("tenant is not suspended", details={"state": tenant.status})
        tenant.status, tenant.suspended_at, tenant.suspension_reason = "active", None, None
        tenant.version += 1
        tenant.updated_at = utc_now()
        resumed = await lifecycle.unsuspend_tenant(self.session, TenantId(tenant_id), reason=reason)
        self._audit(tenant_id, reason=reason, instances=resumed)
        return to_schema(tenant)

    async def quota(self, tenant_id: str) -> schemas.TenantQuota:
        tenant = await self.repo.get(tenant_id)
        quota = await self.repo.quota(tenant_id)
        return schemas.TenantQuota(
            tenant_id=tenant_id,
            plan=tenant.plan,
            custom=quota.custom,
            limits=msgspec.convert(quota, schemas.QuotaLimits, from_attributes=True),
            usage=await self.usage(tenant_id),
            updated_at=quota.updated_at,
            version=tenant.version,
        )

    async def set_quota(self, tenant_id: str, limits: schemas.QuotaLimits) -> schemas.TenantQuota:
        tenant = await self._locked(tenant_id)
        _not_deleting(tenant)
        quota = await self.repo.quota(tenant_id)
        for field, value in msgspec.structs.asdict(limits).items():
            setattr(quota, field, value)
        quota.custom, quota.updated_at = True, utc_now()
        tenant.version += 1
        await self.session.flush()
        await self._quota_changed(tenant_id)
        self._audit(tenant_id, limits=msgspec.structs.asdict(limits))
        return await self.quota(tenant_id)
