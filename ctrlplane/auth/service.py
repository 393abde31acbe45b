"""API keys: created by a tenant for itself (or by a system admin for any tenant), shown once,
stored as a SHA-256 hash, revoked at once. A key's roles never exceed its creator's."""

from __future__ import annotations

import secrets
from datetime import datetime

import msgspec
from sqlalchemy import Select, case, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.auth import schemas
from ctrlplane.auth.models import ApiKey
from ctrlplane.auth.providers import API_KEY_PREFIX, hash_api_key
from ctrlplane.errors import Forbidden, InvalidInput, InvalidState, NotFound
from ctrlplane.ids import new_id
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import as_utc, utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate
from ctrlplane.web.preconditions import require_version


def to_schema(key: ApiKey) -> schemas.ApiKey:
    return msgspec.convert(key, schemas.ApiKey, from_attributes=True)


class KeyService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session

    async def create(self, data: schemas.ApiKeyCreate) -> schemas.ApiKeyCreated:
        tenant_id = self.context.tenant_scope(data.tenant_id)
        tenant = await TenantRepository(self.session).get(tenant_id)
        if tenant.status == "deleting":  # the key would vanish with the tenant right after it is shown
            raise InvalidState("tenant is being deleted", details={"state": tenant.status})
        roles = sorted(set(data.roles))
        if not self.context.principal.grantable(roles):
            raise Forbidden("a key cannot have roles its creator lacks", details={"roles": roles})
        now = utc_now()
        expires_at = as_utc(data.expires_at, "expires_at") if data.expires_at is not None else None
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at must be in the future", details={"expires_at": "in the past"})
        value = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_id("key"),
            tenant_id=tenant_id,
            name=data.name,
            roles=roles,
            prefix=value[:12],
            secret_hash=hash_api_key(value),
            created_by=self.context.principal.subject,
            created_at=now,
            expires_at=expires_at,
            last_used_at=None,
            revoked_at=None,
            version=1,
        )
        self.session.add(key)
        await self.session.flush()
        self.context.audit.resource_id = key.id
        self.context.audit.tenant_id = tenant_id
        self.context.audit.details.update(name=data.name, roles=roles)
        return schemas.ApiKeyCreated(**msgspec.structs.asdict(to_schema(key)), key=value)

    def _scoped(self, tenant_id: str | None) -> Select[ApiKey]:
        principal = self.context.principal
        statement = select(ApiKey)
        if principal.tenant_id is not None:
            if tenant_id is not None and tenant_id != principal.tenant_id:
                raise Forbidden("tenant_id differs from the tenant of your token")
            return statement.where(ApiKey.tenant_id == principal.tenant_id)
        return statement.where(ApiKey.tenant_id == tenant_id) if tenant_id else statement

    async def list(self, *, tenant_id: str | None, cursor: str | None, limit: int) -> Page[schemas.ApiKey]:
        return await paginate(
            self.session, self._scoped(tenant_id), ApiKey.id, cursor=cursor, limit=limit, convert=to_schema
        )

    async def get(self, key_id: str) -> schemas.ApiKey:
        key = (await self.session.execute(self._scoped(None).where(ApiKey.id == key_id))).scalar_one_or_none()
        if key is None:
            raise NotFound.of("key", key_id)
        return to_schema(key)

    async def revoke(self, key_id: str, *, if_match: str | None = None) -> None:
        """Revoke the key (again: nothing changes); ``if_match`` names its ETag, which revoking moves."""
        statement = self._scoped(None).where(ApiKey.id == key_id).with_for_update()
        key = (await self.session.execute(statement)).scalar_one_or_none()
        if key is None:
            raise NotFound.of("key", key_id)
        require_version(if_match, resource="key", resource_id=key.id, version=key.version)
        self.context.audit.tenant_id = key.tenant_id
        if key.revoked_at is None:
            key.revoked_at = utc_now()
            key.version += 1

    def whoami(self) -> schemas.WhoAmI:
        principal = self.context.principal
        return schemas.WhoAmI(
            subject=principal.subject,
            kind=principal.kind,
            tenant_id=principal.tenant_id,
            roles=sorted(principal.roles),
            system_admin=principal.is_system_admin,
            key_id=principal.key_id,
            expires_at=principal.expires_at,
            can_read=principal.has_role("read"),
            can_deploy=principal.has_role("deploy"),
            can_admin=principal.has_role("admin"),
        )


async def key_counts(session: AsyncSession, now: datetime) -> tuple[int, int, int]:
    """Every tenant's API keys: revoked, expired (not revoked) and all, for the system stats."""
    revoked = ApiKey.revoked_at.is_not(None)
    expired = ApiKey.revoked_at.is_(None) & ApiKey.expires_at.is_not(None) & (ApiKey.expires_at <= now)
    row = (
        await session.execute(
            select(
                func.count(case((revoked, 1))),
                func.count(case((expired, 1))),
                func.count(ApiKey.id),
            )
        )
    ).one()
    return row[0], row[1], row[2]


async def delete_keys_of(session: AsyncSession, tenant_id: str) -> None:
    """Delete the tenant's API keys (it is being deleted: its keys stop working at once)."""
    await session.execute(delete(ApiKey).where(ApiKey.tenant_id == tenant_id))
