from __future__ import annotations

from litestar import Controller, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody

from ctrlplane.health import schemas
from ctrlplane.health.service import HealthService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page
from ctrlplane.web.preconditions import ETAG, IfMatch, tagged


class HealthController(Controller):
    tags = ["health"]

    @post(
        "/v1/instances/{instance_id:str}/health/checks",
        operation_id="createHealthCheck",
        responses=errors(404, mutating=True),
        opt=route("health_check", "create"),
    )
    async def create(
        self, instance_id: FromPath[str], data: JSONBody[schemas.HealthCheckCreate], request: ApiRequest
    ) -> schemas.HealthCheck:
        """Define a health check on an instance (http, tcp or command); the scheduler runs it."""
        context = context_of(request)
        return await HealthService(context).create(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/health/checks",
        operation_id="listHealthChecks",
        responses=errors(404),
        opt=route("health_check", "list"),
    )
    async def list_checks(
        self, instance_id: FromPath[str], request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.HealthCheck]:
        """An instance's health checks, newest first."""
        context = context_of(request)
        return await HealthService(context).list(instance_id, cursor=cursor, limit=limit)

    @get(
        "/v1/health/checks/{check_id:str}",
        operation_id="getHealthCheck",
        responses=errors(404),
        opt=route("health_check", "get"),
        response_headers=[ETAG],
    )
    async def get_check(self, check_id: FromPath[str], request: ApiRequest) -> Response[schemas.HealthCheck]:
        """A health check; its ETag is the version If-Match names."""
        context = context_of(request)
        check = await HealthService(context).get(check_id)
        return tagged(check, check.version)

    @patch(
        "/v1/health/checks/{check_id:str}",
        operation_id="updateHealthCheck",
        responses=errors(404, 412, mutating=True),
        opt=route("health_check", "update"),
        response_headers=[ETAG],
    )
    async def update_check(
        self,
        check_id: FromPath[str],
        data: JSONBody[schemas.HealthCheckUpdate],
        request: ApiRequest,
        if_match: IfMatch = None,
    ) -> Response[schemas.HealthCheck]:
        """Change only the fields present (not the type); a new target makes the status unknown."""
        context = context_of(request)
        check = await HealthService(context, if_match=if_match).update(check_id, data)
        return tagged(check, check.version)

    @delete(
        "/v1/health/checks/{check_id:str}",
        operation_id="deleteHealthCheck",
        responses=errors(404, 412, mutating=True),
        opt=route("health_check", "delete"),
    )
    async def delete_check(self, check_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None) -> None:
        """Delete a health check and its results."""
        context = context_of(request)
        await HealthService(context, if_match=if_match).delete(check_id)

    @post(
        "/v1/health/checks/{check_id:str}/run",
        status_code=200,
        operation_id="runHealthCheck",
        responses=errors(404, 412, mutating=True),
        opt=route("health_check", "run"),
        response_headers=[ETAG],
    )
    async def run(
        self, check_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None
    ) -> Response[schemas.CheckRun]:
        """Run a health check now; answers with its fresh result. A run is an observation: it honours
        If-Match but leaves the check's version (its ETag) as it was."""
        context = context_of(request)
        run = await HealthService(context, if_match=if_match).run(check_id)
        return tagged(run, run.check.version)

    @get(
        "/v1/instances/{instance_id:str}/health",
        operation_id="getInstanceHealth",
        responses=errors(404),
        opt=route("health", "get"),
    )
    async def health(self, instance_id: FromPath[str], request: ApiRequest) -> schemas.InstanceHealth:
        """The instance's aggregate health with each check's latest result and 24-hour uptime."""
        context = context_of(request)
        return await HealthService(context).health(instance_id)
