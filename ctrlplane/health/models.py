from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class HealthCheck(Base):
    """A check a tenant defined on an instance, and what the scheduler last concluded about it.

    ``status``: ``unknown`` (no conclusion yet) → ``unhealthy`` after ``retries`` consecutive failed
    runs → ``healthy`` after one successful run. ``next_run_at`` is when the scheduler runs it next;
    claiming a run moves it forward, so two servers never run the same check at once.
    """

    __tablename__ = "health_checks"
    __table_args__ = (UniqueConstraint("instance_id", "name", name="uq_health_checks_instance_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(Text)
    interval: Mapped[str] = mapped_column(String(32))
    timeout: Mapped[str] = mapped_column(String(32))
    interval_seconds: Mapped[float] = mapped_column(Float)
    timeout_seconds: Mapped[float] = mapped_column(Float)
    retries: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    created_by: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class HealthCheckResult(Base):
    """One run of a check: kept for ``CTRLPLANE_HEALTH_RESULT_RETENTION``, at most
    ``CTRLPLANE_HEALTH_RESULTS_PER_CHECK`` per check."""

    __tablename__ = "health_check_results"
    __table_args__ = (Index("ix_health_check_results_check_checked", "check_id", "checked_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    check_id: Mapped[str] = mapped_column(ForeignKey("health_checks.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(8))
    latency_ms: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
