"""registry credentials; instances' read-only root filesystem; signed audit checkpoints

Revision ID: 0021
Revises: 0023
Create Date: 2026-12-05 05:40:00

``registry_credentials``: a tenant's login to a private image registry, one per registry, its
password sealed with the tenant's data key. ``instances.read_only_root_fs``: run the containers
with a read-only root filesystem (a tmpfs at /tmp stays writable); existing instances keep a
writable one. ``audit_checkpoints``: every audit chain's head at a moment, signed with a key
derived from the secrets master ring.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ctrlplane.db

revision: str = "0021"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "registry_credentials",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=261), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("sealed_password", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_registry_credentials_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_credentials")),
        sa.UniqueConstraint("tenant_id", "host", name=op.f("uq_registry_credentials_tenant_id_host")),
    )
    with op.batch_alter_table("registry_credentials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_credentials_tenant_id"), ["tenant_id"], unique=False)
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("at", ctrlplane.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heads", sa.JSON(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("signature", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    with op.batch_alter_table("instances", recreate="never") as batch_op:
        batch_op.add_column(sa.Column("read_only_root_fs", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    # Never by rebuilding the table on SQLite (see 0011): dropping the old copy of instances would
    # cascade to everything that hangs off it. SQLite drops a plain column in place.
    with op.batch_alter_table("instances", recreate="never") as batch_op:
        batch_op.drop_column("read_only_root_fs")
    with op.batch_alter_table("registry_credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_credentials_tenant_id"))
    op.drop_table("registry_credentials")
