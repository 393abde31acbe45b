from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from ctrlplane.instances.schemas import Command, DnsName, Env, Timeout, argv

RunState = Literal["pending", "running", "succeeded", "failed", "cancelled", "missed"]
RunKind = Literal["run", "job", "release"]
Concurrency = Literal["allow", "forbid", "replace"]
TERMINAL = ("succeeded", "failed", "cancelled", "missed")

Schedule = Annotated[str, msgspec.Meta(min_length=9, max_length=255, description="Cron expression")]
TimeZone = Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="IANA time zone, e.g. Europe/Paris")]

__all__ = ["Command", "argv"]


class Run(msgspec.Struct):
    id: str
    tenant_id: str
    instance_id: str
    kind: RunKind
    job_id: str | None
    deployment_id: str | None
    release_id: str | None
    command: list[str]
    state: RunState
    exit_code: int | None
    output: str
    """The output's last lines, secret values redacted (``GET /v1/runs/{id}/logs`` has it all while
    the container exists)."""
    error: str | None
    timeout: int
    cancel_requested: bool
    scheduled_at: datetime | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunCreate(msgspec.Struct, forbid_unknown_fields=True):
    command: Command
    env: Env = msgspec.field(default_factory=dict)
    timeout: Timeout | None = None


class RunLogLine(msgspec.Struct):
    timestamp: datetime
    stream: str
    message: str


class RunLogs(msgspec.Struct):
    run_id: str
    items: list[RunLogLine]


class Job(msgspec.Struct):
    id: str
    tenant_id: str
    instance_id: str
    name: str
    schedule: str
    timezone: str
    command: list[str]
    timeout: int
    concurrency: Concurrency
    enabled: bool
    next_run_at: datetime | None
    last_scheduled_at: datetime
    version: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    recent_runs: list[Run] = msgspec.field(default_factory=list)


class JobCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: DnsName
    schedule: Schedule
    command: Command
    timezone: TimeZone = "UTC"
    timeout: Timeout = 3600
    concurrency: Concurrency = "forbid"
    enabled: bool = True


class JobUpdate(msgspec.Struct, forbid_unknown_fields=True):
    schedule: Schedule | msgspec.UnsetType = msgspec.UNSET
    timezone: TimeZone | msgspec.UnsetType = msgspec.UNSET
    command: Command | msgspec.UnsetType = msgspec.UNSET
    timeout: Timeout | msgspec.UnsetType = msgspec.UNSET
    concurrency: Concurrency | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
