from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class Release(Base):
    """An immutable snapshot of everything an instance runs: version N of that instance."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("instance_id", "version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(512))
    env: Mapped[dict[str, str]] = mapped_column(JSON)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    ports: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    cpu_millis: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    replicas: Mapped[int] = mapped_column(Integer)
    secrets_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """The instance's secrets as of this revision of them (``ctrlplane.secrets``); 0: none."""
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    release_command: Mapped[list[str] | None] = mapped_column(JSON)
    """The release phase's argv (``ctrlplane.runs``): run once per deploy before any new replica."""
    release_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    notes: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
