from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery

from ctrlplane.admin import schemas
from ctrlplane.admin.service import AdminService
from ctrlplane.audit import checkpoints
from ctrlplane.audit import schemas as audit_schemas
from ctrlplane.audit import service as audit_service
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, Moment, context_of, errors, parse_moment, route
from ctrlplane.web.pagination import Page


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]

    @get("/stats", operation_id="getStats", responses=errors(), opt=route("stats", "get", system_admin=True))
    async def stats(self, request: ApiRequest) -> schemas.SystemStats:
        """Counts across the system: tenants by status, instances by state, recent deployments, API keys."""
        context = context_of(request)
        return await AdminService(context).stats()

    @get(
        "/providers", operation_id="listProviders", responses=errors(), opt=route("provider", "list", system_admin=True)
    )
    async def providers(self, request: ApiRequest) -> Page[schemas.ProviderStatus]:
        """Registered providers and whether each answers right now."""
        context = context_of(request)
        items = await AdminService(context).providers()
        return Page(items=items, next_cursor=None, total=len(items))

    @get(
        "/audit/checkpoints",
        operation_id="listAuditCheckpoints",
        responses=errors(),
        opt=route("audit_checkpoint", "list", system_admin=True),
    )
    async def audit_checkpoints(
        self, request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[checkpoints.Checkpoint]:
        """Signed checkpoints of the audit chains' heads, newest first: export them, keep them elsewhere."""
        context = context_of(request)
        return await checkpoints.page(context.session, cursor=cursor, limit=limit)

    @get(
        "/audit/verify",
        operation_id="verifyAudit",
        responses=errors(),
        opt=route("audit", "verify", system_admin=True),
    )
    async def verify_audit(
        self, request: ApiRequest, allow_unkeyed_prefix: FromQuery[bool] = False
    ) -> audit_schemas.AuditVerification:
        """Walk every audit chain with the server's audit keys: intact, or the first broken link."""
        context = context_of(request)
        report = await audit_service.verify(
            context.session, context.services.audit_keys, allow_unkeyed_prefix=allow_unkeyed_prefix
        )
        broken = (
            msgspec.convert(report.broken, audit_schemas.BrokenLink, from_attributes=True) if report.broken else None
        )
        return audit_schemas.AuditVerification(
            intact=broken is None, chains=report.chains, entries=report.entries, broken=broken
        )

    @get("/audit", operation_id="queryAudit", responses=errors(), opt=route("audit", "list", system_admin=True))
    async def audit(
        self,
        request: ApiRequest,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
        tenant_id: FromQuery[str | None] = None,
        resource: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        actor: FromQuery[str | None] = None,
        since: Moment = None,
        until: Moment = None,
    ) -> Page[audit_schemas.AuditEntry]:
        """Query the audit log, newest first."""
        context = context_of(request)
        return await audit_service.query(
            context.session,
            cursor=cursor,
            limit=limit,
            tenant_id=tenant_id,
            resource=resource,
            action=action,
            actor=actor,
            since=parse_moment(since, "since"),
            until=parse_moment(until, "until"),
        )
