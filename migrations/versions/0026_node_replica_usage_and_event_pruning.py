"""each replica's latest usage as its node shipped it (node_replica_usage), and what node event
pruning needs (nodes.state_pulled_seq, ix_node_events_issued_at)

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-06 05:00:00

The agent ships each running replica's usage (metric records of group ``replica``); the control
plane keeps the latest per replica, which ``GET /v1/instances/{id}/resources`` of an instance on a
node shows. A node's signed event log is pruned past ``CTRLPLANE_NODE_EVENT_RETENTION``, keeping
every event after the node's latest pull of its desired state (``state_pulled_seq``): it resumes
after that number, so the events up to it are no longer needed for its replay.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ctrlplane.db

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_replica_usage",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cpu_percent", sa.Float(), nullable=False),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_limit_bytes", sa.BigInteger(), nullable=False),
        sa.Column("network_rx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("network_tx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_node_replica_usage_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("instance_id", "generation", "replica", name=op.f("pk_node_replica_usage")),
    )
    with op.batch_alter_table("node_replica_usage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_replica_usage_node_id"), ["node_id"], unique=False)
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state_pulled_seq", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("node_events", schema=None) as batch_op:
        batch_op.create_index("ix_node_events_issued_at", ["issued_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("node_events", schema=None) as batch_op:
        batch_op.drop_index("ix_node_events_issued_at")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("state_pulled_seq")
    with op.batch_alter_table("node_replica_usage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_replica_usage_node_id"))
    op.drop_table("node_replica_usage")
