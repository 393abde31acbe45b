"""api_keys: a NOTIFY for every updated or deleted row (PostgreSQL)

Revision ID: 0018
Revises: 0012
Create Date: 2026-12-04 17:40:00

API keys join the row cache (``ctrlplane/rowcache.py``): a replica serves a key it has read from
memory, so every replica must hear of every change to a key (a revocation above all) the moment
it commits. The trigger calls the function of revision 0012 (``ctrlplane_rows``); on SQLite the
server sets up the same trigger itself as a ``TEMP`` trigger (``ctrlplane/db.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE TRIGGER ctrlplane_rows_api_keys AFTER UPDATE OR DELETE ON api_keys "
        "FOR EACH ROW EXECUTE FUNCTION ctrlplane_row_changed()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS ctrlplane_rows_api_keys ON api_keys")
