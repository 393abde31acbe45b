from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from ctrlplane.errors import InvalidInput
from ctrlplane.instances import schemas
from ctrlplane.instances.schemas import InstanceState
from ctrlplane.instances.service import InstanceService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page
from ctrlplane.web.preconditions import ETAG, IfMatch, tagged

LabelFilter = Annotated[
    list[str] | None, QueryParameter(description="k=v; repeat to require several labels", max_items=10)
]


def _labels(raw: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in raw or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput("label filters look like label=key=value", details={"label": item})
        labels[key] = value
    return labels


def _tagged(instance: schemas.Instance, status_code: int = 200) -> Response[schemas.Instance]:
    return tagged(instance, instance.version, status_code)


class InstanceController(Controller):
    path = "/v1/instances"
    tags = ["instances"]

    @post(operation_id="createInstance", responses=errors(404, mutating=True), opt=route("instance", "create"))
    async def create(self, data: JSONBody[schemas.InstanceCreate], request: ApiRequest) -> schemas.Instance:
        """Create an instance; workers provision it (state provisioning → running)."""
        context = context_of(request)
        return await InstanceService(context).create(data)

    @get(operation_id="listInstances", responses=errors(), opt=route("instance", "list"))
    async def list_instances(
        self,
        request: ApiRequest,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
        state_filter: Annotated[InstanceState | None, QueryParameter(name="state")] = None,
        label: LabelFilter = None,
        provider: FromQuery[str | None] = None,
        name: FromQuery[str | None] = None,
        tenant_id: Annotated[
            str | None, QueryParameter(description="System admins: only this tenant's instances")
        ] = None,
    ) -> Page[schemas.Instance]:
        """List instances, newest first; destroyed ones only when asked for by state."""
        context = context_of(request)
        return await InstanceService(context).list(
            state=state_filter,
            labels=_labels(label),
            provider=provider,
            name=name,
            tenant_id=tenant_id,
            cursor=cursor,
            limit=limit,
        )

    @get(
        "/{instance_id:str}",
        operation_id="getInstance",
        responses=errors(404),
        opt=route("instance", "get"),
        response_headers=[ETAG],
    )
    async def get_instance(self, instance_id: FromPath[str], request: ApiRequest) -> Response[schemas.Instance]:
        """Get an instance; its ETag is the version If-Match names."""
        context = context_of(request)
        return _tagged(await InstanceService(context).get(instance_id))

    @patch(
        "/{instance_id:str}",
        operation_id="updateInstance",
        responses=errors(404, 412, mutating=True),
        response_headers=[ETAG],
        opt=route("instance", "update"),
    )
    async def update(
        self,
        instance_id: FromPath[str],
        data: JSONBody[schemas.InstanceUpdate],
        request: ApiRequest,
        if_match: IfMatch = None,
    ) -> Response[schemas.Instance]:
        """Change only the fields present; env, ports and labels roll out new containers."""
        context = context_of(request)
        return _tagged(await InstanceService(context, if_match=if_match).update(instance_id, data))

    @delete(
        "/{instance_id:str}",
        status_code=202,
        operation_id="deleteInstance",
        responses=errors(404, 412, mutating=True),
        response_headers=[ETAG],
        opt=route("instance", "delete"),
    )
    async def delete_instance(
        self, instance_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None
    ) -> Response[schemas.Instance]:
        """Destroy an instance: 202, then destroying → destroyed as its containers are removed."""
        context = context_of(request)
        return _tagged(await InstanceService(context, if_match=if_match).delete(instance_id), 202)

    @post(
        "/{instance_id:str}/start",
        status_code=202,
        operation_id="startInstance",
        responses=errors(404, 412, mutating=True),
        response_headers=[ETAG],
        opt=route("instance", "start"),
    )
    async def start(
        self, instance_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None
    ) -> Response[schemas.Instance]:
        """Start a stopped or failed instance."""
        context = context_of(request)
        return _tagged(await InstanceService(context, if_match=if_match).act(instance_id, "start"), 202)

    @post(
        "/{instance_id:str}/stop",
        status_code=202,
        operation_id="stopInstance",
        responses=errors(404, 412, mutating=True),
        response_headers=[ETAG],
        opt=route("instance", "stop"),
    )
    async def stop(
        self, instance_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None
    ) -> Response[schemas.Instance]:
        """Stop an instance, keeping its containers."""
        context = context_of(request)
        return _tagged(await InstanceService(context, if_match=if_match).act(instance_id, "stop"), 202)

    @post(
        "/{instance_id:str}/restart",
        status_code=202,
        operation_id="restartInstance",
        responses=errors(404, 412, mutating=True),
        response_headers=[ETAG],
        opt=route("instance", "restart"),
    )
    async def restart(
        self, instance_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None
    ) -> Response[schemas.Instance]:
        """Restart a running or failed instance."""
        context = context_of(request)
        return _tagged(await InstanceService(context, if_match=if_match).act(instance_id, "restart"), 202)

    @post(
        "/{instance_id:str}/scale",
        status_code=202,
        operation_id="scaleInstance",
        responses=errors(404, 412, mutating=True),
        response_headers=[ETAG],
        opt=route("instance", "scale"),
    )
    async def scale(
        self,
        instance_id: FromPath[str],
        data: JSONBody[schemas.ScaleRequest],
        request: ApiRequest,
        if_match: IfMatch = None,
    ) -> Response[schemas.Instance]:
        """Change resources per replica and/or the replica count, within the tenant's quota."""
        context = context_of(request)
        return _tagged(await InstanceService(context, if_match=if_match).scale(instance_id, data), 202)

    @post(
        "/{instance_id:str}/suspend",
        status_code=202,
        operation_id="suspendInstance",
        responses=errors(404, 412, mutating=True),
        response_headers=[ETAG],
        opt=route("instance", "suspend", system_admin=True),
    )
    async def suspend(
        self,
        instance_id: FromPath[str],
        request: ApiRequest,
        data: JSONBody[schemas.SuspendRequest | None] = None,
        if_match: IfMatch = None,
    ) -> Response[schemas.Instance]:
        """Suspend an instance (system admins): it stops and refuses start until unsuspended."""
        context = context_of(request)
        return _tagged(
            await InstanceService(context, if_match=if_match).suspend(instance_id, schemas.reason_of(data)), 202
        )

    @post(
        "/{instance_id:str}/unsuspend",
        status_code=202,
        operation_id="unsuspendInstance",
        responses=errors(404, 412, mutating=True),
        response_headers=[ETAG],
        opt=route("instance", "unsuspend", system_admin=True),
    )
    async def unsuspend(
        self,
        instance_id: FromPath[str],
        request: ApiRequest,
        data: JSONBody[schemas.SuspendRequest | None] = None,
        if_match: IfMatch = None,
    ) -> Response[schemas.Instance]:
        """Lift an instance's suspension; it starts again if it was running."""
        context = context_of(request)
        return _tagged(
            await InstanceService(context, if_match=if_match).unsuspend(instance_id, schemas.reason_of(data)), 202
        )
