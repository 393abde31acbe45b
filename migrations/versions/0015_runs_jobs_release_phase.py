"""runs and jobs; release_command and release_timeout_seconds on instances and releases

Revision ID: 0015
Revises: 0012
Create Date: 2026-12-04 17:00:00

``runs`` holds one-off runs, job firings and release phases (one-shot containers of a release);
its unique ``(job_id, scheduled_at)`` is the claim that makes a job fire once across replicas.
``jobs`` holds cron schedules. An instance and each release it cuts carry the release phase's
command and timeout.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ctrlplane.db import UTCDateTime

revision: str = "0015"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("instances", "releases"):
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.add_column(sa.Column("release_command", sa.JSON(), nullable=True))
            batch.add_column(sa.Column("release_timeout_seconds", sa.Integer(), nullable=True))
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(64), sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("schedule", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("last_scheduled_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_run_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("instance_id", "name", name="uq_jobs_instance_name"),
    )
    op.create_index("ix_jobs_tenant_id", "jobs", ["tenant_id"])
    op.create_index("ix_jobs_instance_id", "jobs", ["instance_id"])
    op.create_index("ix_jobs_next_run_at", "jobs", ["next_run_at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(64), sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("deployment_id", sa.String(64), nullable=True),
        sa.Column("release_id", sa.String(64), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("cpu_millis", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("scheduled_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "scheduled_at", name="uq_runs_job_scheduled_at"),
    )
    op.create_index("ix_runs_tenant_id", "runs", ["tenant_id"])
    op.create_index("ix_runs_job_id", "runs", ["job_id"])
    op.create_index("ix_runs_deployment_id", "runs", ["deployment_id"])
    op.create_index("ix_runs_instance_id_id", "runs", ["instance_id", "id"])
    op.create_index("ix_runs_state", "runs", ["state"])


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("jobs")
    # Never by rebuilding the table on SQLite (see 0011): dropping the old copy of instances would
    # cascade to everything that hangs off it. SQLite drops a plain column in place.
    for table in ("releases", "instances"):
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.drop_column("release_timeout_seconds")
            batch.drop_column("release_command")
