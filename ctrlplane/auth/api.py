from __future__ import annotations

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from ctrlplane.auth import schemas
from ctrlplane.auth.service import KeyService
from ctrlplane.web.http import DEFAULT_PAGE, Context, Cursor, Limit, errors, route
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
    async def create(self, data: JSONBody[schemas.ApiKeyCreate], context: Context) -> schemas.ApiKeyCreated:
        """Create an API key; its value is in this response only."""
        return await KeyService(context).create(data)

    @get(operation_id="listKeys", responses=errors(), opt=route("key", "list", role="admin"))
    async def list_keys(
        self,
        context: Context,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
        tenant_id: FromQuery[str | None] = None,
    ) -> Page[schemas.ApiKey]:
        """List API keys (never their values), newest first."""
        return await KeyService(context).list(tenant_id=tenant_id, cursor=cursor, limit=limit)

    @get("/self", operation_id="whoAmI", responses=errors(), opt=route("key", "self", role="any"))
    async def whoami(self, context: Context) -> schemas.WhoAmI:
        """Who this token is and what it may do."""
        return KeyService(context).whoami()

    @get(
        "/{key_id:str}",
        operation_id="getKey",
        responses=errors(404),
        opt=route("key", "get", role="admin"),
        response_headers=[ETAG],
    )
    async def get_key(self, key_id: FromPath[str], context: Context) -> Response[schemas.ApiKey]:
        """An API key (never its value); its ETag is the version If-Match names."""
        key = await KeyService(context).get(key_id)
        return tagged(key, key.version)

    @delete(
        "/{key_id:str}",
        operation_id="revokeKey",
        responses=errors(404, 412, mutating=True),
        opt=route("key", "revoke", role="admin"),
    )
    async def revoke(self, key_id: FromPath[str], context: Context, if_match: IfMatch = None) -> None:
        """Revoke an API key; it stops working at once."""
        await KeyService(context).revoke(key_id, if_match=if_match)
