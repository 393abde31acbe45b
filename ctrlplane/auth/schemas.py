from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Role = Literal["read", "deploy", "admin"]


class ApiKey(msgspec.Struct):
    id: str
    tenant_id: str
    name: str
    roles: list[str]
    prefix: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    version: int
    """Counts the changes clients made; the ETag is this number in quotes."""


class ApiKeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    roles: Annotated[list[Role], msgspec.Meta(min_length=1, max_length=3)]
    expires_at: datetime | None = None
    tenant_id: str | None = None


class ApiKeyCreated(ApiKey):
    key: str
    """The key's value. It is shown only in this response; store it now."""


class WhoAmI(msgspec.Struct):
    subject: str
    kind: str
    tenant_id: str | None
    roles: list[str]
    system_admin: bool
    key_id: str | None
    expires_at: datetime | None
    can_read: bool
    can_deploy: bool
    can_admin: bool
