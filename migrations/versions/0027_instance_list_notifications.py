"""instances: a NOTIFY naming the tenant whenever its list of live instances changes (PostgreSQL)

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 12:00:00

The row cache (``ctrlplane/rowcache.py``) also holds which instances a tenant's unfiltered list
pages show (their ids, cursors and total), so such a page costs no statement. That membership
changes when an instance is inserted, deleted, or changes state (``destroyed`` leaves the list;
an instance never changes tenant), and every replica must hear of it, whoever writes: a row
trigger calls
``pg_notify('ctrlplane_rows', 'instance_pages:<tenant_id>')``, delivered at commit like revision
0012's (PostgreSQL folds the same notification sent twice in one transaction into one). Any other
update (health, status message, version) leaves membership alone and is covered by 0012's
notification of the row itself. On SQLite the server sets up the same triggers as ``TEMP``
triggers of its own connections (``ctrlplane/db.py``), so this revision does nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION ctrlplane_instance_listed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('ctrlplane_rows', 'instance_pages:' || OLD.tenant_id);
            ELSE
                PERFORM pg_notify('ctrlplane_rows', 'instance_pages:' || NEW.tenant_id);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ctrlplane_instance_pages AFTER INSERT OR DELETE ON instances "
        "FOR EACH ROW EXECUTE FUNCTION ctrlplane_instance_listed()"
    )
    op.execute(
        "CREATE TRIGGER ctrlplane_instance_pages_state AFTER UPDATE OF state ON instances "
        "FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION ctrlplane_instance_listed()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS ctrlplane_instance_pages_state ON instances")
    op.execute("DROP TRIGGER IF EXISTS ctrlplane_instance_pages ON instances")
    op.execute("DROP FUNCTION IF EXISTS ctrlplane_instance_listed()")
