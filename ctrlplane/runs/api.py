from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from ctrlplane.errors import Forbidden
from ctrlplane.runs import schemas, stream
from ctrlplane.runs.service import JobService, RunService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.openapi import EVENT_STREAM
from ctrlplane.web.pagination import Page

Tail = Annotated[int, QueryParameter(ge=1, le=10_000, description="At most this many last lines")]


class RunController(Controller):
    tags = ["runs"]

    @post(
        "/v1/instances/{instance_id:str}/runs",
        operation_id="createRun",
        responses=errors(404, 409, mutating=True),
        opt=route("run", "create"),
    )
    async def create_run(
        self, instance_id: FromPath[str], data: JSONBody[schemas.RunCreate], request: ApiRequest
    ) -> schemas.Run:
        """Run a command once in a new container of the instance's current release; 201 with the pending run."""
        context = context_of(request)
        return await RunService(context).create(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/runs",
        operation_id="listRuns",
        responses=errors(404),
        opt=route("run", "list"),
    )
    async def list_runs(
        self, instance_id: FromPath[str], request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Run]:
        """The instance's runs (one-off, job firings, release phases)."""
        context = context_of(request)
        return await RunService(context).list(instance_id, cursor=cursor, limit=limit)

    @get("/v1/runs/{run_id:str}", operation_id="getRun", responses=errors(404), opt=route("run", "get"))
    async def get_run(self, run_id: FromPath[str], request: ApiRequest) -> schemas.Run:
        """A run: state, exit code, started/finished, the output's last lines."""
        context = context_of(request)
        return await RunService(context).get(run_id)

    @get(
        "/v1/runs/{run_id:str}/logs",
        operation_id="runLogs",
        responses=errors(404),
        opt={**route("run", "logs"), EVENT_STREAM: True},
    )
    async def run_logs(
        self, run_id: FromPath[str], request: ApiRequest, follow: FromQuery[bool] = False, tail: Tail = 1000
    ) -> Response[Any]:
        """A run's output (deploy role: what a container prints may hold secrets); follow=true streams it as
        Server-Sent Events (line events, then one end event)."""
        context = context_of(request)
        run = await RunService(context).row(run_id)
        if not context.principal.has_role("deploy"):
            raise Forbidden("a run's output is shown to the deploy role only", details={"required_role": "deploy"})
        services = context.services
        await context.session.close()
        if not follow:
            return Response(await stream.read(services, run, tail=tail))

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            async for kind, item in stream.follow(services, run.id):
                if kind == "heartbeat":
                    yield ServerSentEventMessage(comment="heartbeat")
                else:
                    yield ServerSentEventMessage(data=msgspec.json.encode(item).decode(), event=kind)

        return ServerSentEvent(messages(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @post(
        "/v1/runs/{run_id:str}/cancel",
        status_code=202,
        operation_id="cancelRun",
        responses=errors(404, 409, mutating=True),
        opt=route("run", "cancel"),
    )
    async def cancel_run(self, run_id: FromPath[str], request: ApiRequest) -> schemas.Run:
        """Stop a run: a pending one at once, a running one's container is killed."""
        context = context_of(request)
        return await RunService(context).cancel(run_id)


class JobController(Controller):
    tags = ["runs"]

    @post(
        "/v1/instances/{instance_id:str}/jobs",
        operation_id="createJob",
        responses=errors(404, 409, mutating=True),
        opt=route("job", "create"),
    )
    async def create_job(
        self, instance_id: FromPath[str], data: JSONBody[schemas.JobCreate], request: ApiRequest
    ) -> schemas.Job:
        """Schedule a command on a cron schedule in a time zone; 201 with the job."""
        context = context_of(request)
        return await JobService(context).create(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/jobs",
        operation_id="listJobs",
        responses=errors(404),
        opt=route("job", "list"),
    )
    async def list_jobs(
        self, instance_id: FromPath[str], request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Job]:
        """The instance's jobs."""
        context = context_of(request)
        return await JobService(context).list(instance_id, cursor=cursor, limit=limit)

    @get("/v1/jobs/{job_id:str}", operation_id="getJob", responses=errors(404), opt=route("job", "get"))
    async def get_job(self, job_id: FromPath[str], request: ApiRequest) -> schemas.Job:
        """A job with its most recent runs."""
        context = context_of(request)
        return await JobService(context).get(job_id)

    @patch(
        "/v1/jobs/{job_id:str}",
        operation_id="updateJob",
        responses=errors(404, mutating=True),
        opt=route("job", "update"),
    )
    async def update_job(
        self, job_id: FromPath[str], data: JSONBody[schemas.JobUpdate], request: ApiRequest
    ) -> schemas.Job:
        """Change a job's schedule, command, timeout, concurrency or enabled."""
        context = context_of(request)
        return await JobService(context).update(job_id, data)

    @delete(
        "/v1/jobs/{job_id:str}",
        operation_id="deleteJob",
        responses=errors(404, mutating=True),
        opt=route("job", "delete"),
    )
    async def delete_job(self, job_id: FromPath[str], request: ApiRequest) -> None:
        """Delete a job; its past runs stay."""
        context = context_of(request)
        await JobService(context).delete(job_id)
