from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", max_length=63)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
TenantStatus = Literal["active", "suspended", "deleting"]


class Tenant(msgspec.Struct):
    id: str
    name: str
    slug: str
    plan: str
    status: TenantStatus
    suspended_at: datetime | None
    suspension_reason: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    slug: Slug
    plan: str | None = None


class TenantUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    plan: str | msgspec.UnsetType = msgspec.UNSET


class SuspendRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


NO_REASON = "no reason given"


def reason_of(request: SuspendRequest | None) -> str:
    """The reason of a suspend/unsuspend; the body is optional (seed 001 sends none)."""
    return request.reason if request is not None else NO_REASON


class QuotaLimits(msgspec.Struct, forbid_unknown_fields=True):
    max_instances: Limit
    max_cpu_millis: Limit
    max_memory_mb: Limit
    max_domains: Limit
    max_routes: Limit
    max_secrets: Limit
    max_environments_per_owner: Limit | None = None
    """Active environments one owner may hold in the tenant (docs/environments.md); null: none."""


class QuotaUsage(msgspec.Struct):
    instances: int
    cpu_millis: int
    memory_mb: int
    domains: int
    routes: int
    secrets: int


class TenantQuota(msgspec.Struct):
    tenant_id: str
    plan: str
    custom: bool
    limits: QuotaLimits
    usage: QuotaUsage
    updated_at: datetime
    version: int
    """The tenant's version: the quota is part of the tenant, so its ETag is the tenant's."""
