from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from ctrlplane.provisioning.contract import PullPolicy, RestartPolicy

InstanceState = Literal[
    "provisioning",
    "starting",
    "running",
    "stopping",
    "stopped",
    "sleeping",
    "failed",
    "destroying",
    "destroyed",
    "unknown",
]
DesiredState = Literal["running", "stopped", "sleeping", "destroyed"]

DnsName = Annotated[
    str, msgspec.Meta(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", max_length=63, description="DNS label")
]
ImageRef = Annotated[
    str,
    msgspec.Meta(
        pattern=(
            r"^(?:(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+|localhost)(?::[0-9]{1,5})?/|[a-zA-Z0-9-]+:[0-9]{1,5}/)?"
            r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
            r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
        ),
        max_length=512,
        description="Image reference: [registry/]name[:tag][@sha256:digest]",
    ),
]
EnvKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)]
EnvValue = Annotated[str, msgspec.Meta(max_length=32768)]
LabelKey = Annotated[
    str, msgspec.Meta(pattern=r"^(?!ctrlplane\.)[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$", max_length=128)
]
LabelValue = Annotated[str, msgspec.Meta(max_length=256)]
Env = Annotated[dict[EnvKey, EnvValue], msgspec.Meta(max_length=200)]
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=64)]
Replicas = Annotated[int, msgspec.Meta(ge=1, le=20)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Argv = Annotated[list[Annotated[str, msgspec.Meta(max_length=8192)]], msgspec.Meta(min_length=1, max_length=256)]
Shell = Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
Command = Argv | Shell
"""An argv (run as is) or a shell string (run as ``/bin/sh -c STRING``)."""
Timeout = Annotated[int, msgspec.Meta(ge=1, le=7 * 86400, description="Seconds")]


def argv(command: Command) -> list[str]:
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


class Resources(msgspec.Struct, forbid_unknown_fields=True):
    cpu_millis: Annotated[int, msgspec.Meta(ge=10, le=256_000)] = 500
    memory_mb: Annotated[int, msgspec.Meta(ge=6, le=1_048_576)] = 256


class Port(msgspec.Struct, forbid_unknown_fields=True):
    container_port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    protocol: Literal["tcp", "udp"] = "tcp"


Ports = Annotated[list[Port], msgspec.Meta(max_length=20)]


class Endpoint(msgspec.Struct):
    container_port: int
    protocol: str
    host: str
    host_port: int
    url: str
    replica: int


class Instance(msgspec.Struct):
    id: str
    tenant_id: str
    name: str
    image: str
    provider_name: str
    state: InstanceState
    desired_state: DesiredState
    status_message: str
    resources: Resources
    replicas: int
    ports: list[Port]
    env: dict[str, str]
    labels: dict[str, str]
    restart_policy: RestartPolicy
    pull_policy: PullPolicy
    endpoints: list[Endpoint]
    restart_count: int
    suspended_at: datetime | None
    suspension_reason: str | None
    current_release_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    hostnames: list[str] = msgspec.field(default_factory=list)
    """The router's hostname for it (``<name>.<tenant-slug>.<CTRLPLANE_ROUTER_BASE_DOMAIN>``)."""
    url: str | None = None
    """Its URL through the router."""
    release_command: list[str] | None = None
    """Run once per deploy before any new replica starts (the release phase)."""
    release_timeout: int | None = None
    read_only_root_fs: bool = False
    """Containers run with a read-only root filesystem and a writable tmpfs at /tmp."""


class InstanceCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: DnsName
    image: ImageRef
    tenant_id: str | None = None
    provider_name: str | None = None
    resources: Resources = msgspec.field(default_factory=Resources)
    replicas: Replicas = 1
    ports: Ports = msgspec.field(default_factory=list)
    env: Env = msgspec.field(default_factory=dict)
    labels: Labels = msgspec.field(default_factory=dict)
    restart_policy: RestartPolicy = "always"
    pull_policy: PullPolicy = "IfNotPresent"
    release_command: Command | None = None
    release_timeout: Timeout | None = None
    read_only_root_fs: bool = False
    """Run the containers with a read-only root filesystem (a writable tmpfs at /tmp, 64 MiB)."""


class InstanceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: DnsName | msgspec.UnsetType = msgspec.UNSET
    labels: Labels | msgspec.UnsetType = msgspec.UNSET
    env: Env | msgspec.UnsetType = msgspec.UNSET
    ports: Ports | msgspec.UnsetType = msgspec.UNSET
    resources: Resources | msgspec.UnsetType = msgspec.UNSET
    read_only_root_fs: bool | msgspec.UnsetType = msgspec.UNSET
    """A change rolls out new containers, like env."""


class ScaleRequest(msgspec.Struct, forbid_unknown_fields=True):
    resources: Resources | msgspec.UnsetType = msgspec.UNSET
    replicas: Replicas | msgspec.UnsetType = msgspec.UNSET


class SuspendRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


NO_REASON = "no reason given"


def reason_of(request: SuspendRequest | None) -> str:
    """The reason of a suspend/unsuspend; the body is optional (seed 001 sends none)."""
    return request.reason if request is not None else NO_REASON
