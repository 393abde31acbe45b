from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class Environment(Base):
    """An on-demand instance made from a pinned template version, found again by ``key``.

    ``state``: ``active`` (its instance is wanted), ``terminating`` (its instance is being
    removed), ``terminated``. At most one *active* environment per tenant and key: the partial
    unique index, not a lock in memory, is what makes concurrent get-or-creates agree."""

    __tablename__ = "environments"
    __table_args__ = (
        Index(
            "uq_environments_tenant_key_active",
            "tenant_id",
            "key",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
        Index("ix_environments_tenant_id_id", "tenant_id", "id"),
        Index("ix_environments_state_expires_at", "state", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(128))
    template_id: Mapped[str] = mapped_column(String(64), index=True)
    template_version: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    state: Mapped[str] = mapped_column(String(16))
    instance_id: Mapped[str | None] = mapped_column(String(64), index=True)
    hostname: Mapped[str | None] = mapped_column(String(255))
    ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    max_lifetime_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    extends_used: Mapped[int] = mapped_column(Integer, default=0)
    idle_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    on_idle: Mapped[str] = mapped_column(String(16))
    tags: Mapped[list[str]] = mapped_column(JSON)
    termination_reason: Mapped[str | None] = mapped_column(String(32))
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
