from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

CheckType = Literal["http", "tcp", "command"]
CheckStatus = Literal["unknown", "healthy", "unhealthy"]
AggregateStatus = Literal["healthy", "degraded", "unhealthy", "unknown"]
ResultStatus = Literal["pass", "fail"]

CheckName = Annotated[
    str,
    msgspec.Meta(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$", max_length=63),
]
Duration = Annotated[str, msgspec.Meta(min_length=1, max_length=32, description='Go-style duration: "30s", "1m30s"')]
Target = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class HealthCheckCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: CheckName
    type: CheckType
    target: Target
    interval: Duration = "30s"
    timeout: Duration = "5s"
    retries: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    enabled: bool = True


class HealthCheckUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields present change; the type is fixed (a target's meaning depends on it)."""

    name: CheckName | msgspec.UnsetType = msgspec.UNSET
    target: Target | msgspec.UnsetType = msgspec.UNSET
    interval: Duration | msgspec.UnsetType = msgspec.UNSET
    timeout: Duration | msgspec.UnsetType = msgspec.UNSET
    retries: Annotated[int, msgspec.Meta(ge=1, le=100)] | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class CheckResult(msgspec.Struct):
    id: str
    check_id: str
    status: ResultStatus
    latency_ms: float
    message: str
    manual: bool
    checked_at: datetime


class HealthCheck(msgspec.Struct):
    id: str
    tenant_id: str
    instance_id: str
    name: str
    type: CheckType
    target: str
    interval: str
    timeout: str
    retries: int
    enabled: bool
    status: CheckStatus
    consecutive_failures: int
    last_checked_at: datetime | None
    last_success_at: datetime | None
    version: int
    """Counts the changes clients made; the ETag is this number in quotes."""
    created_by: str
    created_at: datetime
    updated_at: datetime


class CheckRun(msgspec.Struct):
    """A check run on request: its result and the check as it stands after it."""

    result: CheckResult
    check: HealthCheck


class CheckHealth(msgspec.Struct):
    check_id: str
    name: str
    type: CheckType
    target: str
    enabled: bool
    status: CheckStatus
    latest: CheckResult | None
    latency_ms: float | None
    consecutive_failures: int
    last_success_at: datetime | None
    uptime_percent: float | None
    """Passing runs among this check's runs of the last 24 hours (those still kept); null without any."""


class InstanceHealth(msgspec.Struct):
    instance_id: str
    status: AggregateStatus
    instance_state: str
    checks: list[CheckHealth]
