"""tenant_quotas.max_environments_per_owner: a tenant-wide limit of active environments per owner

Revision ID: 0023
Revises: 0017
Create Date: 2026-12-05 05:30:00

Templates could limit how many active environments one owner holds; a tenant could not. The column
is nullable: null is no tenant limit (the template's or the server's setting applies).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenant_quotas", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_environments_per_owner", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_quotas", schema=None) as batch_op:
        batch_op.drop_column("max_environments_per_owner")
