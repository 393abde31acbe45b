"""node_assignments.retained: replicas of other generations a node keeps during a gated deploy

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06 02:45:00

A deploy of an instance on a node starts the new generation beside the old one; the old replicas
stay (``retained``) until the deploy engine has taken them out of the router's rotation.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node_assignments") as batch:
        batch.add_column(sa.Column("retained", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("node_assignments") as batch:
        batch.drop_column("retained")
