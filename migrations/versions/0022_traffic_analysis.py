"""deploys judged by traffic (deployments.analysis and canary_steps, upstream_request_samples) and
log drains' own delivery headers (log_drains.header_names, headers_sealed)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 05:30:00

A deploy may carry a traffic analysis (thresholds on the new replicas' own requests) and canary
weight steps; the router's sink stores each replica's round trips per flush so the deploy engine,
on any server, can judge them. A log drain may send its own headers (an ``Authorization``, say),
sealed like secrets; only their names are readable.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ctrlplane.db

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("analysis", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("canary_steps", sa.JSON(), nullable=True))
    with op.batch_alter_table("log_drains", schema=None) as batch_op:
        batch_op.add_column(sa.Column("header_names", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("headers_sealed", sa.LargeBinary(), nullable=True))
    op.create_table(
        "upstream_request_samples",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("taken_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("duration_buckets", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_upstream_request_samples_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "instance_id", "generation", "replica", "taken_at", name=op.f("pk_upstream_request_samples")
        ),
    )
    with op.batch_alter_table("upstream_request_samples", schema=None) as batch_op:
        batch_op.create_index("ix_upstream_request_samples_taken_at", ["taken_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upstream_request_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_upstream_request_samples_taken_at")
    op.drop_table("upstream_request_samples")
    with op.batch_alter_table("log_drains", schema=None) as batch_op:
        batch_op.drop_column("headers_sealed")
        batch_op.drop_column("header_names")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("canary_steps")
        batch_op.drop_column("analysis")
