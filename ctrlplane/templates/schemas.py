from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from ctrlplane.health.schemas import Duration, HealthCheckCreate
from ctrlplane.instances.schemas import Command, DnsName, EnvKey, LabelKey, Ports, Replicas, Resources, Timeout
from ctrlplane.network.schemas import RouteCreate
from ctrlplane.provisioning.contract import PullPolicy, RestartPolicy

ParameterName = Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="lower_snake_case")]
ParameterType = Literal["string", "integer", "boolean", "enum"]
ParameterValue = str | int | bool
TemplatedValue = Annotated[str, msgspec.Meta(max_length=32768)]


class Parameter(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: ParameterName
    type: ParameterType = "string"
    default: ParameterValue | None = None
    required: bool = False
    pattern: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    values: Annotated[list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=100)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class TemplateSpec(msgspec.Struct, forbid_unknown_fields=True):
    """The instance-create body without ``name``, plus the health checks and routes each
    environment's instance gets; ``{{parameter}}`` may appear in the image, env values, label
    values, health checks' targets and routes' paths."""

    image: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    resources: Resources = msgspec.field(default_factory=Resources)
    replicas: Replicas = 1
    ports: Ports = msgspec.field(default_factory=list)
    env: Annotated[dict[EnvKey, TemplatedValue], msgspec.Meta(max_length=200)] = msgspec.field(default_factory=dict)
    labels: Annotated[dict[LabelKey, Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=64)] = (
        msgspec.field(default_factory=dict)
    )
    restart_policy: RestartPolicy = "always"
    pull_policy: PullPolicy = "IfNotPresent"
    release_command: Command | None = None
    """The release phase of the environments' instances: run before each deploy's new replicas."""
    release_timeout: Timeout | None = None
    health_checks: Annotated[list[HealthCheckCreate], msgspec.Meta(max_length=20)] = msgspec.field(default_factory=list)
    """Made on every environment's instance as ``POST /v1/instances/{id}/health/checks`` would."""
    routes: Annotated[list[RouteCreate], msgspec.Meta(max_length=20)] = msgspec.field(default_factory=list)
    """Made on every environment's instance as ``POST /v1/instances/{id}/routes`` would."""


class Pool(msgspec.Struct, forbid_unknown_fields=True):
    min_ready: Annotated[int, msgspec.Meta(ge=0, le=20)] = 0
    """Ready, unassigned instances kept running (refilled in the background)."""
    max_ready: Annotated[int, msgspec.Meta(ge=0, le=20)] = 0
    """At most this many; members above it are retired."""
    cold_start: bool = True
    """false: an empty pool answers 503 + Retry-After instead of starting an instance."""


Parameters = Annotated[list[Parameter], msgspec.Meta(max_length=50)]
Extends = Annotated[int, msgspec.Meta(ge=0, le=1000)]
PerOwner = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class TemplateCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: DnsName
    spec: TemplateSpec
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    parameters: Parameters = msgspec.field(default_factory=list)
    max_ttl: Duration | None = None
    max_extends: Extends | None = None
    pool: Pool = msgspec.field(default_factory=Pool)
    max_environments_per_owner: PerOwner | None = None
    tenant_id: str | None = None
    """System admins: the tenant to create it in; omitted, a system template for every tenant."""


class TemplateUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: DnsName | msgspec.UnsetType = msgspec.UNSET
    description: Annotated[str, msgspec.Meta(max_length=2000)] | msgspec.UnsetType = msgspec.UNSET
    spec: TemplateSpec | msgspec.UnsetType = msgspec.UNSET
    parameters: Parameters | msgspec.UnsetType = msgspec.UNSET
    max_ttl: Duration | msgspec.UnsetType | None = msgspec.UNSET
    max_extends: Extends | msgspec.UnsetType | None = msgspec.UNSET
    pool: Pool | msgspec.UnsetType = msgspec.UNSET
    max_environments_per_owner: PerOwner | msgspec.UnsetType | None = msgspec.UNSET


class Template(msgspec.Struct):
    id: str
    tenant_id: str | None
    system: bool
    name: str
    description: str
    version: int
    spec: TemplateSpec
    parameters: list[Parameter]
    max_ttl: str | None
    max_extends: int | None
    pool: Pool
    max_environments_per_owner: int | None
    created_at: datetime
    updated_at: datetime
