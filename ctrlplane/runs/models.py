from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class Run(Base):
    """One command in a one-shot container of a release: ``kind`` ``run`` (one-off), ``job`` (a
    job's firing) or ``release`` (a deployment's release phase).

    pending → running → succeeded | failed | cancelled; a job's firing that did not run is
    recorded as ``missed`` directly. ``(job_id, scheduled_at)`` is unique: the database claim that
    makes a firing happen once whichever replica's scheduler sees it first.
    """

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("job_id", "scheduled_at", name="uq_runs_job_scheduled_at"),
        Index("ix_runs_instance_id_id", "instance_id", "id"),
        Index("ix_runs_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    deployment_id: Mapped[str | None] = mapped_column(String(64), index=True)
    release_id: Mapped[str | None] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer)
    command: Mapped[list[str]] = mapped_column(JSON)
    env: Mapped[dict[str, str]] = mapped_column(JSON)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    cpu_millis: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Job(Base):
    """A command an instance runs on a cron schedule (in a time zone); each firing is a ``Run``.
    ``last_scheduled_at`` is the newest firing already dealt with (run, skipped or missed); a
    scheduler claims the next one by moving it forward with a compare-and-set."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("instance_id", "name", name="uq_jobs_instance_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    schedule: Mapped[str] = mapped_column(String(255))
    timezone: Mapped[str] = mapped_column(String(64))
    command: Mapped[list[str]] = mapped_column(JSON)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean)
    last_scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
