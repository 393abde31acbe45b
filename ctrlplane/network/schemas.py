from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Path = Annotated[str, msgspec.Meta(min_length=1, max_length=256, description="URL path prefix, starting with /")]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535, description="One of the instance's container ports")]
Weight = Annotated[int, msgspec.Meta(ge=0, le=100, description="Share among routes of the same path, 0 to 100")]
Protocol = Annotated[str, msgspec.Meta(max_length=16, description="Only http is supported")]
Hostname = Annotated[str, msgspec.Meta(min_length=1, max_length=254, description="A fully qualified domain name")]


class RouteCreate(msgspec.Struct, forbid_unknown_fields=True):
    path: Path
    port: Port
    protocol: Protocol = "http"
    weight: Weight = 100
    strip_prefix: bool = False


class RouteUpdate(msgspec.Struct, forbid_unknown_fields=True):
    path: Path | msgspec.UnsetType = msgspec.UNSET
    port: Port | msgspec.UnsetType = msgspec.UNSET
    protocol: Protocol | msgspec.UnsetType = msgspec.UNSET
    weight: Weight | msgspec.UnsetType = msgspec.UNSET
    strip_prefix: bool | msgspec.UnsetType = msgspec.UNSET


class Route(msgspec.Struct):
    id: str
    tenant_id: str
    instance_id: str
    path: str
    port: int
    protocol: str
    weight: int
    strip_prefix: bool
    version: int
    """Counts the changes clients made; the ETag is this number in quotes."""
    created_at: datetime
    updated_at: datetime


class DomainCreate(msgspec.Struct, forbid_unknown_fields=True):
    hostname: Hostname


class Verification(msgspec.Struct):
    type: Literal["TXT"]
    name: str
    value: str


CertificateStatus = Literal["pending", "issued", "renewing", "failed"]


class Certificate(msgspec.Struct):
    id: str
    domain_id: str
    status: CertificateStatus
    issuer: str | None
    not_before: datetime | None
    not_after: datetime | None
    serial: str | None
    error: str | None
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Domain(msgspec.Struct):
    id: str
    tenant_id: str
    instance_id: str
    hostname: str
    status: Literal["pending", "verified", "superseded"]
    """``superseded``: another claim of the hostname (any tenant's) was verified first."""
    verification: Verification
    verified_at: datetime | None
    certificate: Certificate | None
    version: int
    """Counts the changes clients made; the ETag is this number in quotes."""
    created_at: datetime
    updated_at: datetime


Duration = Annotated[
    str,
    msgspec.Meta(
        min_length=2,
        max_length=32,
        pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$",
        description="A duration such as 90s, 15m or 2h",
    ),
]


class InstanceTraffic(msgspec.Struct):
    """What the router saw of an instance, and its sleep state and idle policy."""

    instance_id: str
    state: str
    last_request_at: datetime | None
    idle_timeout_seconds: int | None
    slept_at: datetime | None
    woken_at: datetime | None


class IdlePolicy(msgspec.Struct, forbid_unknown_fields=True):
    """``idle_timeout``: put the instance to sleep after this long without a request; null: never."""

    idle_timeout: Duration | None
