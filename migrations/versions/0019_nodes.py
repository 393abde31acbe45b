"""nodes: enrolment tokens, nodes, their event streams, assignments, reports, executions, signing keys, log lines

Revision ID: 0019
Revises: 0022
Create Date: 2026-12-05 05:22:57

The control-plane side of seed 002 (docs/nodes.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ctrlplane.db

revision: str = "0019"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_signing_keys",
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("private_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("transition_expires", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_node_signing_keys")),
    )
    with op.batch_alter_table("node_signing_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_signing_keys_created_at"), ["created_at"], unique=False)

    op.create_table(
        "node_enrollment_tokens",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("pool", sa.String(length=100), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=True),
        sa.Column("description", sa.String(length=256), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_node_enrollment_tokens_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_enrollment_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_node_enrollment_tokens_token_hash")),
    )
    with op.batch_alter_table("node_enrollment_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_enrollment_tokens_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=False),
        sa.Column("scope_hostname", sa.String(length=600), nullable=True),
        sa.Column("pool", sa.String(length=100), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("credential_hash", sa.String(length=64), nullable=False),
        sa.Column("credential_expires_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("nsk_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("cpu_millis", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("cordoned", sa.Boolean(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("unreachable", sa.Boolean(), nullable=False),
        sa.Column("reconcile_wanted", sa.Boolean(), nullable=False),
        sa.Column("rotate_keys_wanted", sa.Boolean(), nullable=False),
        sa.Column("last_heartbeat_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat", sa.JSON(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("registered_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deregistered_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_nodes_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("credential_hash", name=op.f("uq_nodes_credential_hash")),
        sa.UniqueConstraint("scope_hostname", name=op.f("uq_nodes_scope_hostname")),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.create_index("ix_nodes_pool_status", ["pool", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_nodes_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "node_assignments",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("secrets_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("cpu_millis", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("assigned_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_node_assignments_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_node_assignments")),
    )
    with op.batch_alter_table("node_assignments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_assignments_node_id"), ["node_id"], unique=False)

    op.create_table(
        "node_events",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("issued_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_node_events_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("node_id", "seq", name=op.f("pk_node_events")),
    )
    op.create_table(
        "node_executions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_node_executions_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_executions")),
    )
    with op.batch_alter_table("node_executions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_executions_node_id"), ["node_id"], unique=False)

    op.create_table(
        "node_log_lines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(length=8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_node_log_lines_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_log_lines")),
    )
    with op.batch_alter_table("node_log_lines", schema=None) as batch_op:
        batch_op.create_index("ix_node_log_lines_instance_at", ["instance_id", "at"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_log_lines_node_id"), ["node_id"], unique=False)

    op.create_table(
        "node_reports",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_node_reports_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("node_id", "key", name=op.f("pk_node_reports")),
    )


def downgrade() -> None:
    op.drop_table("node_reports")
    with op.batch_alter_table("node_log_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_log_lines_node_id"))
        batch_op.drop_index("ix_node_log_lines_instance_at")

    op.drop_table("node_log_lines")
    with op.batch_alter_table("node_executions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_executions_node_id"))

    op.drop_table("node_executions")
    op.drop_table("node_events")
    with op.batch_alter_table("node_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_assignments_node_id"))

    op.drop_table("node_assignments")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nodes_tenant_id"))
        batch_op.drop_index("ix_nodes_pool_status")

    op.drop_table("nodes")
    with op.batch_alter_table("node_enrollment_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_enrollment_tokens_tenant_id"))

    op.drop_table("node_enrollment_tokens")
    with op.batch_alter_table("node_signing_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_signing_keys_created_at"))

    op.drop_table("node_signing_keys")
