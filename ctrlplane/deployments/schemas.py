from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from ctrlplane.deployments.analysis import Analysis, AnalysisResult
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
    analysis: AnalysisResult | None = None
    """A traffic analysis judged at this step: the measured values and the outcome."""


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
    analysis: Analysis | None = None
    canary_steps: list[int] | None = None
    """The canary's traffic weights in percent (the request's ``steps``)."""


class DeployRequest(msgspec.Struct, forbid_unknown_fields=True):
    image: ImageRef
    strategy: Strategy = "rolling"
    env: Env = msgspec.field(default_factory=dict)
    notes: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    commit_sha: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{4,64}$")] | None = None
    release_command: Command | msgspec.UnsetType | None = msgspec.UNSET
    """Replaces the instance's release command from this release on (null: none); absent: kept."""
    release_timeout: Timeout | msgspec.UnsetType | None = msgspec.UNSET
    analysis: Analysis | None = None
    """Thresholds on the new replicas' own traffic; exceeding one rolls the deploy back."""
    steps: Annotated[list[int], msgspec.Meta(max_length=10)] | None = None
    """Canary only: the new generation's traffic share at each step, in percent, ending at 100."""


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    release_id: str
    strategy: Strategy = "rolling"
    run_release: bool = False
    """Run the target release's release command again before its replicas start."""
