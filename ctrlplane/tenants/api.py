from __future__ import annotations

from litestar import Controller, Response, delete, get, patch, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody

from ctrlplane.tenants import schemas
from ctrlplane.tenants.schemas import TenantStatus
from ctrlplane.tenants.service import TenantService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page
from ctrlplane.web.preconditions import ETAG, IfMatch, tagged


def _tagged(tenant: schemas.Tenant, status_code: int = 200) -> Response[schemas.Tenant]:
    return tagged(tenant, tenant.version, status_code)


class TenantController(Controller):
    path = "/v1/admin/tenants"
    tags = ["admin"]

    @post(
        operation_id="createTenant", responses=errors(mutating=True), opt=route("tenant", "create", system_admin=True)
    )
    async def create(self, data: JSONBody[schemas.TenantCreate], request: ApiRequest) -> schemas.Tenant:
        """Create a tenant; its quota starts at the plan's defaults."""
        context = context_of(request)
        return await TenantService(context).create(data)

    @get(operation_id="listTenants", responses=errors(), opt=route("tenant", "list", system_admin=True))
    async def list_tenants(
        self,
        request: ApiRequest,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
        status: FromQuery[TenantStatus | None] = None,
    ) -> Page[schemas.Tenant]:
        """List tenants, newest first."""
        context = context_of(request)
        return await TenantService(context).list(status=status, cursor=cursor, limit=limit)

    @get(
        "/{tenant_id:str}",
        operation_id="getTenant",
        responses=errors(404),
        opt=route("tenant", "get", system_admin=True),
        response_headers=[ETAG],
    )
    async def get_tenant(self, tenant_id: FromPath[str], request: ApiRequest) -> Response[schemas.Tenant]:
        """Get a tenant; its ETag is the version If-Match names."""
        context = context_of(request)
        return _tagged(await TenantService(context).get(tenant_id))

    @patch(
        "/{tenant_id:str}",
        operation_id="updateTenant",
        responses=errors(404, 412, mutating=True),
        opt=route("tenant", "update", system_admin=True),
        response_headers=[ETAG],
    )
    async def update(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[schemas.TenantUpdate],
        request: ApiRequest,
        if_match: IfMatch = None,
    ) -> Response[schemas.Tenant]:
        """Change a tenant's name or plan; only fields present change."""
        context = context_of(request)
        return _tagged(await TenantService(context, if_match=if_match).update(tenant_id, data))

    @delete(
        "/{tenant_id:str}",
        status_code=202,
        operation_id="deleteTenant",
        responses={204: ResponseSpec(None, description="Deleted"), **errors(404, 412, mutating=True)},
        opt=route("tenant", "delete", system_admin=True),
    )
    async def delete_tenant(
        self,
        tenant_id: FromPath[str],
        request: ApiRequest,
        force: FromQuery[bool] = False,
        if_match: IfMatch = None,
    ) -> Response[schemas.Tenant | None]:
        """Delete a tenant: 204; refused (409) while it owns live instances unless force=true, which
        tears them down (202, status deleting) and removes the tenant once they are gone."""
        context = context_of(request)
        service = TenantService(context, if_match=if_match)
        if await service.delete(tenant_id, force=force):
            return Response(None, status_code=204)
        return Response(await service.get(tenant_id), status_code=202)

    @post(
        "/{tenant_id:str}/suspend",
        status_code=200,
        operation_id="suspendTenant",
        responses=errors(404, 412, mutating=True),
        opt=route("tenant", "suspend", system_admin=True),
        response_headers=[ETAG],
    )
    async def suspend(
        self,
        tenant_id: FromPath[str],
        request: ApiRequest,
        data: JSONBody[schemas.SuspendRequest | None] = None,
        if_match: IfMatch = None,
    ) -> Response[schemas.Tenant]:
        """Suspend a tenant: its tokens may still read, but every mutating call gets 403."""
        context = context_of(request)
        return _tagged(await TenantService(context, if_match=if_match).suspend(tenant_id, schemas.reason_of(data)))

    @post(
        "/{tenant_id:str}/unsuspend",
        status_code=200,
        operation_id="unsuspendTenant",
        responses=errors(404, 412, mutating=True),
        opt=route("tenant", "unsuspend", system_admin=True),
        response_headers=[ETAG],
    )
    async def unsuspend(
        self,
        tenant_id: FromPath[str],
        request: ApiRequest,
        data: JSONBody[schemas.SuspendRequest | None] = None,
        if_match: IfMatch = None,
    ) -> Response[schemas.Tenant]:
        """Lift a tenant's suspension."""
        context = context_of(request)
        return _tagged(await TenantService(context, if_match=if_match).unsuspend(tenant_id, schemas.reason_of(data)))

    @get(
        "/{tenant_id:str}/quota",
        operation_id="getTenantQuota",
        responses=errors(404),
        opt=route("quota", "get", system_admin=True),
        response_headers=[ETAG],
    )
    async def get_quota(self, tenant_id: FromPath[str], request: ApiRequest) -> Response[schemas.TenantQuota]:
        """A tenant's quota limits and current usage; its ETag is the tenant's."""
        context = context_of(request)
        quota = await TenantService(context).quota(tenant_id)
        return tagged(quota, quota.version)

    @put(
        "/{tenant_id:str}/quota",
        operation_id="setTenantQuota",
        responses=errors(404, 412, mutating=True),
        opt=route("quota", "set", system_admin=True),
        response_headers=[ETAG],
    )
    async def set_quota(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[schemas.QuotaLimits],
        request: ApiRequest,
        if_match: IfMatch = None,
    ) -> Response[schemas.TenantQuota]:
        """Replace a tenant's quota limits (all fields required); If-Match names the tenant's ETag."""
        context = context_of(request)
        quota = await TenantService(context, if_match=if_match).set_quota(tenant_id, data)
        return tagged(quota, quota.version)
