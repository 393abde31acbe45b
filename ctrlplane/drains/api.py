from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody

from ctrlplane.drains import schemas
from ctrlplane.drains.service import LogDrainService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page


class LogDrainController(Controller):
    tags = ["log drains"]

    @post(
        "/v1/log-drains",
        operation_id="createLogDrain",
        responses=errors(404, mutating=True),
        opt=route("log_drain", "create"),
    )
    async def create(self, data: JSONBody[schemas.LogDrainCreate], request: ApiRequest) -> schemas.LogDrain:
        """Ship an instance's (or every instance's) log lines, labelled, to a receiver."""
        context = context_of(request)
        return await LogDrainService(context).create(data)

    @get("/v1/log-drains", operation_id="listLogDrains", responses=errors(), opt=route("log_drain", "list"))
    async def list_drains(
        self, request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.LogDrain]:
        """The tenant's log drains with their counters, newest first."""
        context = context_of(request)
        return await LogDrainService(context).list(cursor=cursor, limit=limit)

    @get(
        "/v1/log-drains/{drain_id:str}",
        operation_id="getLogDrain",
        responses=errors(404),
        opt=route("log_drain", "get"),
    )
    async def get_drain(self, drain_id: FromPath[str], request: ApiRequest) -> schemas.LogDrain:
        """A log drain: lines sent, lines dropped, the last error."""
        context = context_of(request)
        return await LogDrainService(context).get(drain_id)

    @delete(
        "/v1/log-drains/{drain_id:str}",
        operation_id="deleteLogDrain",
        responses=errors(404, mutating=True),
        opt=route("log_drain", "delete"),
    )
    async def delete_drain(self, drain_id: FromPath[str], request: ApiRequest) -> None:
        """Stop shipping and delete the drain."""
        context = context_of(request)
        await LogDrainService(context).delete(drain_id)
