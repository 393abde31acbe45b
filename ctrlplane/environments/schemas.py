from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from ctrlplane.health.schemas import Duration
from ctrlplane.templates.schemas import ParameterValue

EnvironmentKey = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
        max_length=128,
        description="Caller's name for the environment, e.g. pr-123; one live environment per key",
    ),
]
Tag = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:=/-]{0,62}$", max_length=63)]
OnIdle = Literal["destroy", "scale_to_zero"]
EnvironmentState = Literal["pooled", "active", "terminating", "terminated"]
TemplateReference = Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="A template's id or name")]


class EnvironmentCreate(msgspec.Struct, forbid_unknown_fields=True):
    key: EnvironmentKey
    template: TemplateReference
    parameters: Annotated[dict[str, ParameterValue], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=dict)
    ttl: Duration | None = None
    idle_timeout: Duration | None = None
    max_lifetime: Duration | None = None
    on_idle: OnIdle = "destroy"
    tags: Annotated[list[Tag], msgspec.Meta(max_length=20)] = msgspec.field(default_factory=list)
    replace: bool = False
    """When the key's live environment differs in template or parameters: terminate it and make a
    new one (otherwise 409)."""
    tenant_id: str | None = None


class ExtendRequest(msgspec.Struct, forbid_unknown_fields=True):
    by: Duration | None = None
    """How long to add; omitted, the environment's ttl."""


class TerminateRequest(msgspec.Struct, forbid_unknown_fields=True):
    hard: bool = False
    """true: kill at once (SIGKILL); false: SIGTERM, the grace period, then SIGKILL."""


class Environment(msgspec.Struct):
    id: str
    tenant_id: str
    key: str
    template_id: str
    template_version: int
    parameters: dict[str, ParameterValue]
    owner: str
    state: EnvironmentState
    instance_id: str | None
    instance_state: str | None
    hostname: str | None
    url: str | None
    ttl: str | None
    expires_at: datetime | None
    max_lifetime_at: datetime | None
    extends_used: int
    extends_left: int | None
    idle_timeout: str | None
    on_idle: OnIdle
    tags: list[str]
    termination_reason: str | None
    terminated_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
