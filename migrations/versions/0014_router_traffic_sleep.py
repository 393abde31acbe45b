"""router traffic: instance_traffic (last request, idle policy, sleep and wake) and http_request_samples

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ctrlplane.db

revision: str = "0014"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_traffic",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("last_request_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("idle_timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("policy_set_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("slept_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("woken_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_instance_traffic_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_instance_traffic_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_traffic")),
    )
    with op.batch_alter_table("instance_traffic", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instance_traffic_tenant_id"), ["tenant_id"], unique=False)
    op.create_table(
        "http_request_samples",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("step_seconds", sa.Integer(), nullable=False),
        sa.Column("taken_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("route", sa.String(length=256), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("status_class", sa.String(length=3), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds_sum", sa.Float(), nullable=False),
        sa.Column("duration_buckets", sa.JSON(), nullable=False),
        sa.Column("request_bytes", sa.BigInteger(), nullable=False),
        sa.Column("response_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_http_request_samples_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "instance_id",
            "step_seconds",
            "taken_at",
            "route",
            "method",
            "status_class",
            name=op.f("pk_http_request_samples"),
        ),
    )
    with op.batch_alter_table("http_request_samples", schema=None) as batch_op:
        batch_op.create_index("ix_http_request_samples_step_taken_at", ["step_seconds", "taken_at"], unique=False)
        batch_op.create_index("ix_http_request_samples_instance_taken_at", ["instance_id", "taken_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("http_request_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_http_request_samples_instance_taken_at")
        batch_op.drop_index("ix_http_request_samples_step_taken_at")
    op.drop_table("http_request_samples")
    with op.batch_alter_table("instance_traffic", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_traffic_tenant_id"))
    op.drop_table("instance_traffic")
