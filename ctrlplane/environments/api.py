from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from ctrlplane.environments import schemas
from ctrlplane.environments.schemas import EnvironmentState
from ctrlplane.environments.service import EnvironmentService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page


class EnvironmentController(Controller):
    path = "/v1/environments"
    tags = ["environments"]

    @post(
        operation_id="getOrCreateEnvironment",
        responses={
            **errors(404, mutating=True),
            200: ResponseSpec(
                data_container=schemas.Environment,
                description="The key's active environment, made earlier from the same template and parameters",
                generate_examples=False,
            ),
        },
        opt=route("environment", "create"),
    )
    async def create(
        self, data: JSONBody[schemas.EnvironmentCreate], request: ApiRequest
    ) -> Response[schemas.Environment]:
        """Get or create by key: 201 with a new environment, 200 with the key's live one."""
        context = context_of(request)
        environment, created = await EnvironmentService(context).get_or_create(data)
        return Response(environment, status_code=201 if created else 200)

    @get(operation_id="listEnvironments", responses=errors(), opt=route("environment", "list"))
    async def list_environments(
        self,
        request: ApiRequest,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
        key: FromQuery[str | None] = None,
        tag: FromQuery[str | None] = None,
        owner: FromQuery[str | None] = None,
        state_filter: Annotated[EnvironmentState | None, QueryParameter(name="state")] = None,
    ) -> Page[schemas.Environment]:
        """List environments, newest first; terminated ones only when asked for by state."""
        context = context_of(request)
        return await EnvironmentService(context).list(
            key=key, tag=tag, owner=owner, state=state_filter, cursor=cursor, limit=limit
        )

    @get(
        "/{environment_id:str}",
        operation_id="getEnvironment",
        responses=errors(404),
        opt=route("environment", "get"),
    )
    async def get_environment(self, environment_id: FromPath[str], request: ApiRequest) -> schemas.Environment:
        """Get an environment, with its instance's state and URL through the router."""
        context = context_of(request)
        return await EnvironmentService(context).get(environment_id)

    @delete(
        "/{environment_id:str}",
        status_code=202,
        operation_id="deleteEnvironment",
        responses=errors(404, mutating=True),
        opt=route("environment", "delete"),
    )
    async def delete_environment(self, environment_id: FromPath[str], request: ApiRequest) -> schemas.Environment:
        """Terminate an environment softly (SIGTERM, grace period, SIGKILL); 202."""
        context = context_of(request)
        return await EnvironmentService(context).terminate(environment_id, hard=False, reason="deleted")

    @post(
        "/{environment_id:str}/extend",
        status_code=200,
        operation_id="extendEnvironment",
        responses=errors(404, mutating=True),
        opt=route("environment", "extend"),
    )
    async def extend(
        self, environment_id: FromPath[str], data: JSONBody[schemas.ExtendRequest], request: ApiRequest
    ) -> schemas.Environment:
        """Move expires_at later, within max_ttl and max_lifetime; 409 extend_limit when spent."""
        context = context_of(request)
        return await EnvironmentService(context).extend(environment_id, data)

    @post(
        "/{environment_id:str}/terminate",
        status_code=202,
        operation_id="terminateEnvironment",
        responses=errors(404, mutating=True),
        opt=route("environment", "terminate"),
    )
    async def terminate(
        self, environment_id: FromPath[str], data: JSONBody[schemas.TerminateRequest], request: ApiRequest
    ) -> schemas.Environment:
        """Terminate now: soft (SIGTERM, grace, SIGKILL) or hard (SIGKILL at once); 202."""
        context = context_of(request)
        return await EnvironmentService(context).terminate(environment_id, hard=data.hard, reason="terminated")
