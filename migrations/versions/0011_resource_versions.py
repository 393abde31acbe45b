"""routes, domains, health checks, API keys, deployments: a version for If-Match

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 22:30:00

Every mutable resource the API exposes carries a version that its ETag names (docs/api.md,
"Concurrency"). Instances and tenants had one from the start; these tables get theirs here.
Existing rows start at 1, as a newly created row does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("routes", "domains", "health_checks", "api_keys", "deployments")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    # Never by rebuilding the table on SQLite: the migrations run with foreign keys on, and dropping
    # the old copy of domains or health_checks would cascade to certificates and check results.
    # SQLite drops a plain column in place (ALTER TABLE ... DROP COLUMN, since 3.35).
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None, recreate="never") as batch_op:
            batch_op.drop_column("version")
