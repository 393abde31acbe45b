from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from ctrlplane.secrets import schemas
from ctrlplane.secrets.service import SecretService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page
from ctrlplane.web.preconditions import ETAG, IfMatch, tagged

Restart = Annotated[
    bool,
    QueryParameter(description="Roll the change out now: a rolling deploy of a new release (running or failed only)"),
]

KeyType = Annotated[
    schemas.SecretType | None,
    QueryParameter(description="file: the key is a path at the root (/NAME), not the env key NAME"),
]


class SecretController(Controller):
    path = "/v1/instances/{instance_id:str}/secrets"
    tags = ["secrets"]

    @post(
        operation_id="setSecret",
        responses=errors(404, 412, mutating=True),
        opt=route("secret", "set", secret_body=True),
        response_headers=[ETAG],
    )
    async def set_secret(
        self,
        instance_id: FromPath[str],
        data: JSONBody[schemas.SecretSet],
        request: ApiRequest,
        restart: Restart = False,
        if_match: IfMatch = None,
    ) -> Response[schemas.Secret]:
        """Set a secret (a new version if the key exists); it takes effect on the next deploy. If-Match
        names the key's current ETag (a key that does not exist yet matches none)."""
        context = context_of(request)
        secret = await SecretService(context, if_match=if_match).set(instance_id, data, restart=restart)
        return tagged(secret, secret.version, 201)

    @get(operation_id="listSecrets", responses=errors(404), opt=route("secret", "list"))
    async def list_secrets(
        self, instance_id: FromPath[str], request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Secret]:
        """An instance's secrets, newest first: metadata only, never values."""
        context = context_of(request)
        return await SecretService(context).list(instance_id, cursor=cursor, limit=limit)

    @get(
        "/{key:path}",
        operation_id="getSecret",
        responses=errors(404),
        opt=route("secret", "get"),
        response_headers=[ETAG],
    )
    async def get_secret(
        self, instance_id: FromPath[str], key: FromPath[str], request: ApiRequest, type: KeyType = None
    ) -> Response[schemas.Secret]:
        """A secret's metadata, never its value (a file: .../secrets//etc/app/token); its ETag is its version."""
        context = context_of(request)
        secret = await SecretService(context).get(instance_id, key, type=type)
        return tagged(secret, secret.version)

    @delete(
        "/{key:path}",
        status_code=200,
        operation_id="deleteSecret",
        responses=errors(404, 412, mutating=True),
        opt=route("secret", "delete"),
    )
    async def delete_secret(
        self,
        instance_id: FromPath[str],
        key: FromPath[str],
        request: ApiRequest,
        restart: Restart = False,
        type: KeyType = None,
        if_match: IfMatch = None,
    ) -> schemas.SecretDeleted:
        """Delete a secret (a file: .../secrets//etc/app/token); running containers keep it until the next deploy."""
        context = context_of(request)
        return await SecretService(context, if_match=if_match).delete(instance_id, key, type=type, restart=restart)
