"""app metrics pushed over OTLP (app_metric_series, app_metric_samples)

Revision ID: 0024
Revises: 0019
Create Date: 2026-12-05 12:00:00

Instances may push their own metrics to ``POST /v1/otlp/v1/metrics``. Each metric name with one
set of attributes is a series (with the last cumulative point it keeps to turn the next into an
increment); its points are kept, rolled up and expired like the usage samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ctrlplane.db

revision: str = "0024"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "app_metric_series",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("unit", sa.String(length=64), nullable=False),
        sa.Column("cumulative", sa.JSON(), nullable=True),
        sa.Column("last_seen_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_app_metric_series_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_metric_series")),
    )
    with op.batch_alter_table("app_metric_series", schema=None) as batch_op:
        batch_op.create_index("ix_app_metric_series_instance_name", ["instance_id", "name"], unique=False)
    op.create_table(
        "app_metric_samples",
        sa.Column("series_id", sa.String(length=32), nullable=False),
        sa.Column("step_seconds", sa.Integer(), nullable=False),
        sa.Column("taken_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("bucket_counts", sa.JSON(), nullable=True),
        sa.Column("bounds", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["app_metric_series.id"],
            name=op.f("fk_app_metric_samples_series_id_app_metric_series"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("series_id", "step_seconds", "taken_at", name=op.f("pk_app_metric_samples")),
    )
    with op.batch_alter_table("app_metric_samples", schema=None) as batch_op:
        batch_op.create_index("ix_app_metric_samples_step_taken_at", ["step_seconds", "taken_at"], unique=False)
        batch_op.create_index("ix_app_metric_samples_instance_taken_at", ["instance_id", "taken_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("app_metric_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_app_metric_samples_instance_taken_at")
        batch_op.drop_index("ix_app_metric_samples_step_taken_at")
    op.drop_table("app_metric_samples")
    with op.batch_alter_table("app_metric_series", schema=None) as batch_op:
        batch_op.drop_index("ix_app_metric_series_instance_name")
    op.drop_table("app_metric_series")
