from __future__ import annotations

from litestar import Controller, Response, get, post
from litestar.params import FromPath, JSONBody

from ctrlplane.deployments import schemas
from ctrlplane.deployments.service import DeploymentService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page
from ctrlplane.web.preconditions import ETAG, IfMatch, tagged


class DeploymentController(Controller):
    tags = ["deployments"]

    @post(
        "/v1/instances/{instance_id:str}/deploy",
        operation_id="deploy",
        responses=errors(404, 412, mutating=True),
        opt=route("deployment", "deploy"),
    )
    async def deploy(
        self,
        instance_id: FromPath[str],
        data: JSONBody[schemas.DeployRequest],
        request: ApiRequest,
        if_match: IfMatch = None,
    ) -> schemas.Deployment:
        """Deploy a new image (and env) under a strategy; 201 with the pending deployment."""
        context = context_of(request)
        return await DeploymentService(context, if_match=if_match).deploy(instance_id, data)

    @post(
        "/v1/instances/{instance_id:str}/rollback",
        operation_id="rollback",
        responses=errors(404, 412, mutating=True),
        opt=route("deployment", "rollback"),
    )
    async def rollback(
        self,
        instance_id: FromPath[str],
        data: JSONBody[schemas.RollbackRequest],
        request: ApiRequest,
        if_match: IfMatch = None,
    ) -> schemas.Deployment:
        """Roll back to an earlier release: a new deployment and release copying its whole configuration."""
        context = context_of(request)
        return await DeploymentService(context, if_match=if_match).rollback(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/deployments",
        operation_id="listDeployments",
        responses=errors(404),
        opt=route("deployment", "list"),
    )
    async def list_deployments(
        self, instance_id: FromPath[str], request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Deployment]:
        """An instance's deployments, newest first."""
        context = context_of(request)
        return await DeploymentService(context).list(instance_id, cursor=cursor, limit=limit)

    @get(
        "/v1/deployments/{deployment_id:str}",
        operation_id="getDeployment",
        responses=errors(404),
        opt=route("deployment", "get"),
        response_headers=[ETAG],
    )
    async def get_deployment(self, deployment_id: FromPath[str], request: ApiRequest) -> Response[schemas.Deployment]:
        """A deployment: state, strategy, steps with timestamps, error; its ETag is the version If-Match names."""
        context = context_of(request)
        deployment = await DeploymentService(context).get(deployment_id)
        return tagged(deployment, deployment.version)

    @post(
        "/v1/deployments/{deployment_id:str}/cancel",
        status_code=202,
        operation_id="cancelDeployment",
        responses=errors(404, 412, mutating=True),
        opt=route("deployment", "cancel"),
        response_headers=[ETAG],
    )
    async def cancel(
        self, deployment_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None
    ) -> Response[schemas.Deployment]:
        """Ask a running deployment to stop; the previous release is put back (state cancelled)."""
        context = context_of(request)
        deployment = await DeploymentService(context).cancel(deployment_id, if_match=if_match)
        return tagged(deployment, deployment.version, 202)
