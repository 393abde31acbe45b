from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from ctrlplane.instances.schemas import Command, Env, ImageRef, Timeout

Strategy = Literal["rolling", "blue_green", "canary", "recreate"]
DeploymentState = Literal["pending", "running", "succeeded", "failed", "rolled_back", "cancelled"]
TERMINAL = ("succeeded", "failed", "rolled_back", "cancelled")


class Step(msgspec.Struct):
    name: str
    state: str
    started_at: datetime
    finished_at: datetime | None = None
    message: str = ""


class Deployment(msgspec.Struct):
    id: str
    instance_id: str
    tenant_id: str
    release_id: str
    previous_release_id: str | None
    strategy: Strategy
    state: DeploymentState
    steps: list[Step]
    error: str | None
    cancel_requested: bool
    version: int
    """Counts the changes clients made; the ETag is this number in quotes."""
    deadline_at: datetime
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class DeployRequest(msgspec.Struct, forbid_unknown_fields=True):
    image: ImageRef
    strategy: Strategy = "rolling"
    env: Env = msgspec.field(default_factory=dict)
    notes: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    commit_sha: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{4,64}$")] | None = None
    release_command: Command | msgspec.UnsetType | None = msgspec.UNSET
    """Replaces the instance's release command from this release on (null: none); absent: kept."""
    release_timeout: Timeout | msgspec.UnsetType | None = msgspec.UNSET


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    release_id: str
    strategy: Strategy = "rolling"
    run_release: bool = False
    """Run the target release's release command again before its replicas start."""
