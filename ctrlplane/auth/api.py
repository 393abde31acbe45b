from __future__ import annotations

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from ctrlplane.auth import schemas
from ctrlplane.auth.service import KeyService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page
from ctrlplane.web.preconditions import ETAG, IfMatch, tagged


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]

    @post(
        operation_id="createKey",
        responses=errors(404, mutating=True),
        opt=route("key", "create", role="admin", shown_once=("key",)),
    )
    async def create(self, data: JSONBody[schemas.ApiKeyCreate], request: ApiRequest) -> schemas.ApiKeyCreated:
        """Create an API key; its value is in this response only."""
        context = context_of(request)
        return await KeyService(context).create(data)

    @get(operation_id="listKeys", responses=errors(), opt=route("key", "list", role="admin"))
    async def list_keys(
        self,
        request: ApiRequest,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
        tenant_id: FromQuery[str | None] = None,
    ) -> Page[schemas.ApiKey]:
        """List API keys (never their values), newest first."""
        context = context_of(request)
        return await KeyService(context).list(tenant_id=tenant_id, cursor=cursor, limit=limit)

    @get("/self", operation_id="whoAmI", responses=errors(), opt=route("key", "self", role="any"))
    async def whoami(self, request: ApiRequest) -> schemas.WhoAmI:
        """Who this token is and what it may do."""
        context = context_of(request)
        return KeyService(context).whoami()

    @get(
        "/{key_id:str}",
        operation_id="getKey",
        responses=errors(404),
        opt=route("key", "get", role="admin"),
        response_headers=[ETAG],
    )
    async def get_key(self, key_id: FromPath[str], request: ApiRequest) -> Response[schemas.ApiKey]:
        """An API key (never its value); its ETag is the version If-Match names."""
        context = context_of(request)
        key = await KeyService(context).get(key_id)
        return tagged(key, key.version)

    @delete(
        "/{key_id:str}",
        operation_id="revokeKey",
        responses=errors(404, 412, mutating=True),
        opt=route("key", "revoke", role="admin"),
    )
    async def revoke(self, key_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None) -> None:
        """Revoke an API key; it stops working at once."""
        context = context_of(request)
        await KeyService(context).revoke(key_id, if_match=if_match)
