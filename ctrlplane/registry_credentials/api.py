from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody

from ctrlplane.registry_credentials import schemas
from ctrlplane.registry_credentials.service import RegistryCredentialService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page


class RegistryCredentialController(Controller):
    path = "/v1/registry-credentials"
    tags = ["registry credentials"]

    @post(
        operation_id="setRegistryCredential",
        responses=errors(409, mutating=True),
        opt=route("registry_credential", "set", secret_body=True),
    )
    async def set_credential(
        self, data: JSONBody[schemas.RegistryCredentialSet], request: ApiRequest
    ) -> schemas.RegistryCredential:
        """Set the tenant's credentials for a private registry (replacing any for it); used for every pull from it."""
        context = context_of(request)
        return await RegistryCredentialService(context).set(data)

    @get(operation_id="listRegistryCredentials", responses=errors(), opt=route("registry_credential", "list"))
    async def list_credentials(
        self, request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.RegistryCredential]:
        """The tenant's registry credentials, newest first: registry and username, never the password."""
        context = context_of(request)
        return await RegistryCredentialService(context).list(cursor=cursor, limit=limit)

    @get(
        "/{credential_id:str}",
        operation_id="getRegistryCredential",
        responses=errors(404),
        opt=route("registry_credential", "get"),
    )
    async def get_credential(self, credential_id: FromPath[str], request: ApiRequest) -> schemas.RegistryCredential:
        """A registry credential's registry and username."""
        context = context_of(request)
        return await RegistryCredentialService(context).get(credential_id)

    @delete(
        "/{credential_id:str}",
        operation_id="deleteRegistryCredential",
        responses=errors(404, mutating=True),
        opt=route("registry_credential", "delete"),
    )
    async def delete_credential(self, credential_id: FromPath[str], request: ApiRequest) -> None:
        """Forget a registry credential; pulls from that registry go unauthenticated."""
        context = context_of(request)
        await RegistryCredentialService(context).delete(credential_id)
