from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    plan: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16), index=True)
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    suspension_reason: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TenantQuota(Base):
    """Effective limits; copied from the plan at creation and on a plan change, replaced by PUT."""

    __tablename__ = "tenant_quotas"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    custom: Mapped[bool] = mapped_column(default=False)
    max_instances: Mapped[int] = mapped_column(Integer)
    max_cpu_millis: Mapped[int] = mapped_column(Integer)
    max_memory_mb: Mapped[int] = mapped_column(Integer)
    max_domains: Mapped[int] = mapped_column(Integer)
    max_routes: Mapped[int] = mapped_column(Integer)
    max_secrets: Mapped[int] = mapped_column(Integer)
    max_environments_per_owner: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
