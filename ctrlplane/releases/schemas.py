from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from ctrlplane.instances.schemas import Port, Resources

ReleaseReason = Literal["create", "update", "deploy", "rollback"]


class Release(msgspec.Struct):
    id: str
    instance_id: str
    tenant_id: str
    version: int
    image: str
    env: dict[str, str]
    labels: dict[str, str]
    ports: list[Port]
    resources: Resources
    replicas: int
    secrets_revision: int
    """Which revision of the instance's secrets this release runs (values are never shown)."""
    commit_sha: str | None
    notes: str
    reason: ReleaseReason
    created_by: str
    created_at: datetime
    release_command: list[str] | None = None
    release_timeout: int | None = None
