from __future__ import annotations

from litestar import Controller, get
from litestar.params import FromPath

from ctrlplane.releases import schemas
from ctrlplane.releases.service import ReleaseService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page


class ReleaseController(Controller):
    tags = ["releases"]

    @get(
        "/v1/instances/{instance_id:str}/releases",
        operation_id="listReleases",
        responses=errors(404),
        opt=route("release", "list"),
    )
    async def list_releases(
        self, instance_id: FromPath[str], request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Release]:
        """An instance's releases, newest first."""
        context = context_of(request)
        return await ReleaseService(context).list(instance_id, cursor=cursor, limit=limit)

    @get("/v1/releases/{release_id:str}", operation_id="getRelease", responses=errors(404), opt=route("release", "get"))
    async def get_release(self, release_id: FromPath[str], request: ApiRequest) -> schemas.Release:
        """A release: the whole configuration that version ran with."""
        context = context_of(request)
        return await ReleaseService(context).get(release_id)
