from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class Instance(Base):
    """An app a tenant runs. ``desired_state`` is what the API asked for; ``state`` what workers and
    the reconciler last observed and did."""

    __tablename__ = "instances"
    __table_args__ = (
        Index(
            "uq_instances_tenant_name_live",
            "tenant_id",
            "name",
            unique=True,
            sqlite_where=text("state != 'destroyed'"),
            postgresql_where=text("state != 'destroyed'"),
        ),
        # the tenant's list in id order (keyset cursors), whatever other tenants hold (0012)
        Index("ix_instances_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    image: Mapped[str] = mapped_column(String(512))
    provider_name: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16), index=True)
    desired_state: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text, default="")
    cpu_millis: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    replicas: Mapped[int] = mapped_column(Integer)
    ports: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    env: Mapped[dict[str, str]] = mapped_column(JSON)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    restart_policy: Mapped[str] = mapped_column(String(16))
    pull_policy: Mapped[str] = mapped_column(String(16))
    read_only_root_fs: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Containers get a read-only root filesystem (a tmpfs at /tmp stays writable)."""
    endpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    recent_restarts: Mapped[list[float]] = mapped_column(JSON, default=list)
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    suspension_reason: Mapped[str | None] = mapped_column(Text)
    suspended_by: Mapped[str | None] = mapped_column(String(16))
    resume_state: Mapped[str | None] = mapped_column(String(16))
    current_release_id: Mapped[str | None] = mapped_column(String(64))
    release_command: Mapped[list[str] | None] = mapped_column(JSON)
    """The release phase's argv (``ctrlplane.runs``): run once per deploy before any new replica."""
    release_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
