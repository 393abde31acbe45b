"""tenants, instances: a NOTIFY for every updated or deleted row (PostgreSQL)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 04:00:00

The row cache (``ctrlplane/rowcache.py``) serves a tenant's standing and an instance's view from
memory; every replica must hear of every change to those rows, whoever makes it (the API, a
worker, the reconciler, an operator's SQL). A row trigger calls
``pg_notify('ctrlplane_rows', '<table>:<id>')``, which PostgreSQL delivers to the listeners only
when the transaction commits (and not at all when it rolls back), in commit order. Inserts are
not announced: no cache entry can exist for a row that did not. On SQLite (one process) the
server sets up the same triggers itself, as ``TEMP`` triggers of its own connections
(``ctrlplane/db.py``), so this revision does nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tenants", "instances")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION ctrlplane_row_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('ctrlplane_rows', TG_TABLE_NAME || ':' || OLD.id);
            RETURN NULL;
        END
        $$
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER ctrlplane_rows_{table} AFTER UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ctrlplane_row_changed()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS ctrlplane_rows_{table} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS ctrlplane_row_changed()")
