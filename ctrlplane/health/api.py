from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody

from ctrlplane.health import schemas
from ctrlplane.health.service import HealthService
from ctrlplane.http import DEFAULT_PAGE, Context, Cursor, Limit, errors, route
from ctrlplane.pagination import Page


class HealthController(Controller):
    tags = ["health"]

    @post(
        "/v1/instances/{instance_id:str}/health/checks",
        operation_id="createHealthCheck",
        responses=errors(404, mutating=True),
        opt=route("health_check", "create"),
    )
    async def create(
        self, instance_id: FromPath[str], data: JSONBody[schemas.HealthCheckCreate], context: Context
    ) -> schemas.HealthCheck:
        """Define a health check on an instance (http, tcp or command); the scheduler runs it."""
        return await HealthService(context).create(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/health/checks",
        operation_id="listHealthChecks",
        responses=errors(404),
        opt=route("health_check", "list"),
    )
    async def list_checks(
        self, instance_id: FromPath[str], context: Context, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.HealthCheck]:
        """An instance's health checks, newest first."""
        return await HealthService(context).list(instance_id, cursor=cursor, limit=limit)

    @delete(
        "/v1/health/checks/{check_id:str}",
        operation_id="deleteHealthCheck",
        responses=errors(404, mutating=True),
        opt=route("health_check", "delete"),
    )
    async def delete_check(self, check_id: FromPath[str], context: Context) -> None:
        """Delete a health check and its results."""
        await HealthService(context).delete(check_id)

    @post(
        "/v1/health/checks/{check_id:str}/run",
        status_code=200,
        operation_id="runHealthCheck",
        responses=errors(404, mutating=True),
        opt=route("health_check", "run"),
    )
    async def run(self, check_id: FromPath[str], context: Context) -> schemas.CheckRun:
        """Run a health check now; answers with its fresh result."""
        return await HealthService(context).run(check_id)

    @get(
        "/v1/instances/{instance_id:str}/health",
        operation_id="getInstanceHealth",
        responses=errors(404),
        opt=route("health", "get"),
    )
    async def health(self, instance_id: FromPath[str], context: Context) -> schemas.InstanceHealth:
        """The instance's aggregate health with each check's latest result and 24-hour uptime."""
        return await HealthService(context).health(instance_id)
