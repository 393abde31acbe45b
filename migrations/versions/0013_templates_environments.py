"""templates, template_versions, environments (on-demand environments)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 17:00:00

``uq_environments_tenant_key_active`` is the partial unique index that makes get-or-create by key
agree under concurrency: at most one active environment per tenant and key.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ctrlplane.db import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("max_ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("max_extends", sa.Integer(), nullable=True),
        sa.Column("pool_min_ready", sa.Integer(), nullable=False),
        sa.Column("pool_max_ready", sa.Integer(), nullable=False),
        sa.Column("pool_cold_start", sa.Boolean(), nullable=False),
        sa.Column("max_environments_per_owner", sa.Integer(), nullable=True),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_templates_tenant_id", "templates", ["tenant_id"])
    op.create_index(
        "uq_templates_tenant_name_live",
        "templates",
        ["tenant_id", "name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "template_versions",
        sa.Column("template_id", sa.String(64), sa.ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("max_ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("max_extends", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "environments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("template_id", sa.String(64), nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=True),
        sa.Column("hostname", sa.String(255), nullable=True),
        sa.Column("ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("max_lifetime_at", UTCDateTime(), nullable=True),
        sa.Column("extends_used", sa.Integer(), nullable=False),
        sa.Column("idle_timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("on_idle", sa.String(16), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("termination_reason", sa.String(32), nullable=True),
        sa.Column("terminated_at", UTCDateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_environments_tenant_id", "environments", ["tenant_id"])
    op.create_index("ix_environments_template_id", "environments", ["template_id"])
    op.create_index("ix_environments_owner", "environments", ["owner"])
    op.create_index("ix_environments_instance_id", "environments", ["instance_id"])
    op.create_index("ix_environments_tenant_id_id", "environments", ["tenant_id", "id"])
    op.create_index("ix_environments_state_expires_at", "environments", ["state", "expires_at"])
    op.create_index(
        "uq_environments_tenant_key_active",
        "environments",
        ["tenant_id", "key"],
        unique=True,
        sqlite_where=sa.text("state = 'active'"),
        postgresql_where=sa.text("state = 'active'"),
    )


def downgrade() -> None:
    op.drop_table("environments")
    op.drop_table("template_versions")
    op.drop_table("templates")
