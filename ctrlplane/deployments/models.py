from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class Deployment(Base):
    """Rolling an instance from its running release to a new one, under a strategy, with gates.

    pending → running → succeeded | rolled_back (a gate failed; the previous release runs again) |
    cancelled (asked to stop; the previous release runs again) | failed (even going back failed).
    """

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    release_id: Mapped[str] = mapped_column(String(64))
    previous_release_id: Mapped[str | None] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    previous_generation: Mapped[int] = mapped_column(Integer)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The traffic analysis the new replicas are judged by (``analysis.Analysis``), or none."""
    canary_steps: Mapped[list[int] | None] = mapped_column(JSON)
    """A canary's traffic weights in percent, ending at 100; none: the configured single share."""
