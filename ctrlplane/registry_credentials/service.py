"""Registry credentials: a tenant's logins to private image registries (seed 000's
``credentials``: a username and a password), used for every pull of an image from that registry.

One credential per tenant and registry; setting one for a registry that has one replaces it (same
ID). The password is sealed with the tenant's data key like a secret (``secrets.crypto``, bound to
tenant, credential and registry) and is never returned, logged, audited or put in an event; the
list shows registry and username. The registry is admitted by the same policy as image references
(``registries.RegistryPolicy``): credentials for a registry images may not come from are refused.

Workers decrypt the credential for an image's registry just before a provider call
(``for_image``), outside any transaction, and hand it over in ``WorkloadSpec.registry_auth``
only; a change takes effect at the next pull.
"""

from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import Conflict, InvalidInput, NotFound
from ctrlplane.ids import new_id
from ctrlplane.provisioning.contract import RegistryAuth
from ctrlplane.registries import normalized_registry, registry_key
from ctrlplane.registry_credentials import schemas
from ctrlplane.registry_credentials.models import RegistryCredential
from ctrlplane.secrets.crypto import Vault
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices, RequestContext
from ctrlplane.web.pagination import Page, paginate

MAX_CREDENTIALS_PER_TENANT = 50


def _aad(credential_id: str, registry: str) -> bytes:
    return b"registry-credential|" + credential_id.encode() + b"|" + registry.encode()


def to_schema(row: RegistryCredential) -> schemas.RegistryCredential:
    return schemas.RegistryCredential(
        id=row.id,
        tenant_id=row.tenant_id,
        registry=row.host,
        username=row.username,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class RegistryCredentialService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session
        self.tenant_id = context.principal.tenant_id

    def _scoped(self) -> Select[RegistryCredential]:
        statement = select(RegistryCredential)
        if self.tenant_id is not None:
            statement = statement.where(RegistryCredential.tenant_id == self.tenant_id)
        return statement

    async def _credential(self, credential_id: str) -> RegistryCredential:
        statement = self._scoped().where(RegistryCredential.id == credential_id)
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound.of("registry credential", credential_id)
        return found

    async def set(self, data: schemas.RegistryCredentialSet) -> schemas.RegistryCredential:
        """Store the credential for ``data.registry`` (replacing the tenant's one for it, if any)."""
        tenant_id = self.context.tenant_scope(data.tenant_id)
        host = data.registry.lower()
        if not ("." in host or ":" in host or host == "localhost"):
            raise InvalidInput(
                "registry: a registry host has a dot or a port (ghcr.io, registry.local:5000), or is "
                "localhost; Docker Hub is docker.io",
                details={"registry": "a registry host with a dot or a port, or localhost"},
            )
        registry = normalized_registry(host)
        await self.context.services.registries.admit_registry(registry)
        statement = select(RegistryCredential).where(
            RegistryCredential.tenant_id == tenant_id, RegistryCredential.host == registry
        )
        row = (await self.session.execute(statement)).scalar_one_or_none()
        now = utc_now()
        replaced = row is not None
        if row is None:
            held = await self.session.scalar(
                select(func.count()).select_from(RegistryCredential).where(RegistryCredential.tenant_id == tenant_id)
            )
            if (held or 0) >= MAX_CREDENTIALS_PER_TENANT:
                raise Conflict(
                    f"a tenant has at most {MAX_CREDENTIALS_PER_TENANT} registry credentials; delete one first",
                    details={"limit": MAX_CREDENTIALS_PER_TENANT},
                )
            row = RegistryCredential(
                id=new_id("rcr"), tenant_id=tenant_id, host=registry, created_at=now, sealed_password=b""
            )
            self.session.add(row)
        row.username = data.username
        row.created_by = self.context.principal.subject
        row.updated_at = now
        row.sealed_password = await self.context.services.vault.seal(
            self.session, tenant_id, data.password.encode(), aad=_aad(row.id, registry)
        )
        await self.session.flush()
        audit = self.context.audit
        audit.resource_id, audit.tenant_id = row.id, tenant_id
        audit.details.update(registry=registry, username=data.username, replaced=replaced)
        return to_schema(row)

    async def list(self, *, cursor: str | None, limit: int) -> Page[schemas.RegistryCredential]:
        """The tenant's registry credentials, newest first: registry and username, never passwords."""
        return await paginate(
            self.session,
            self._scoped(),
            RegistryCredential.id,
            cursor=cursor,
            limit=limit,
            convert=to_schema,
        )

    async def get(self, credential_id: str) -> schemas.RegistryCredential:
        return to_schema(await self._credential(credential_id))

    async def delete(self, credential_id: str) -> None:
        row = await self._credential(credential_id)
        await self.session.delete(row)
        await self.session.flush()
        audit = self.context.audit
        audit.resource_id, audit.tenant_id = row.id, row.tenant_id
        audit.details.update(registry=row.host)


async def credential_for(session: AsyncSession, vault: Vault, *, tenant_id: str, image: str) -> RegistryAuth | None:
    """The tenant's decrypted credential for ``image``'s registry, if it has one: for a worker."""
    registry = registry_key(image)
    statement = select(RegistryCredential).where(
        RegistryCredential.tenant_id == tenant_id, RegistryCredential.host == registry
    )
    row = (await session.execute(statement)).scalar_one_or_none()
    if row is None:
        return None
    password = await vault.open(session, tenant_id, row.sealed_password, aad=_aad(row.id, registry))
    return RegistryAuth(registry=registry, username=row.username, password=password.decode())


async def for_image(services: AppServices, tenant_id: str, image: str) -> RegistryAuth | None:
    """``credential_for`` in a read session of its own."""
    async with services.db.read() as session:
        return await credential_for(session, services.vault, tenant_id=tenant_id, image=image)
