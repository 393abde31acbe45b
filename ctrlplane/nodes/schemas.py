"""The system admins' view of nodes (``/v1/admin/nodes...``); the node API's bodies are in ``contract.py``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from ctrlplane.nodes.contract import SigningKeys

Pool = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
NodeState = Literal["ready", "unreachable", "cordoned", "draining", "deregistered"]


class EnrollmentTokenCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pool: Pool = "default"
    tenant_id: str | None = None
    """Nodes enrolled with the token run only this tenant's instances; none: any tenant's."""
    ttl: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,7}[smhd]$")] = "1h"
    """How long the token can be used (Go-style duration: ``30m``, ``24h``); at most the server's maximum."""
    description: Annotated[str, msgspec.Meta(max_length=256)] = ""


class EnrollmentToken(msgspec.Struct, kw_only=True):
    id: str
    prefix: str
    pool: str
    tenant_id: str | None
    description: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    node_id: str | None
    revoked_at: datetime | None
    state: Literal["unused", "used", "expired", "revoked"]


class EnrollmentTokenCreated(EnrollmentToken):
    token: str
    """The token's value (``cpx_enroll_...``), shown only in this response."""


class NodeInstance(msgspec.Struct, kw_only=True):
    instance_id: str
    tenant_id: str
    revision: int
    cpu_millis: int
    memory_mb: int
    reported_state: str | None


class NodeCapacityBody(msgspec.Struct, kw_only=True):
    cpu_millis: int
    memory_mb: int
    used_cpu_millis: int
    used_memory_mb: int


class NodeView(msgspec.Struct, kw_only=True):
    id: str
    hostname: str
    pool: str
    tenant_id: str | None
    state: NodeState
    cordoned: bool
    draining: bool
    last_heartbeat_at: datetime | None
    registered_at: datetime
    credential_expires_at: datetime
    metadata: dict[str, str]
    capacity: NodeCapacityBody
    instances: list[NodeInstance]


class ActionCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    action: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    type: Literal["builtin", "hook"] = "builtin"
    parameters: dict[str, Annotated[str, msgspec.Meta(max_length=4096)]] = msgspec.field(default_factory=dict)
    timeout: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,7}[smh]$")] = "300s"


class Execution(msgspec.Struct, kw_only=True):
    id: str
    node_id: str
    action: str
    parameters: dict[str, Any]
    status: str
    reason: str
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class SigningKeysView(msgspec.Struct, kw_only=True):
    keys: SigningKeys
    key_id: str
