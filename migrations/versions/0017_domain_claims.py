"""domains: pending claims of one hostname by several tenants; one verified claim per hostname

Revision ID: 0017
Revises: 0012
Create Date: 2026-12-04 17:45:00

A pending (unverified) claim blocked every other tenant from claiming the hostname: whoever asked
first held it without proving anything. The unique constraint on ``hostname`` becomes a plain
index, and a partial unique index allows one ``verified`` claim per hostname: the first claim to
prove control wins, in the database as well as in the service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERIFIED = sa.text("status = 'verified'")


def _keeping_certificates(alter: Callable[[], None]) -> None:
    """Run ``alter``; on SQLite, which recreates ``domains`` to change a constraint (dropping the old
    table deletes its certificates through ON DELETE CASCADE), put the certificates back after."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        alter()
        return
    rows = [dict(r) for r in bind.execute(sa.text("SELECT * FROM certificates")).mappings()]
    alter()
    if rows:
        columns = list(rows[0])
        bind.execute(sa.text("DELETE FROM certificates"))
        bind.execute(
            sa.text(f"INSERT INTO certificates ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"),
            rows,
        )


def upgrade() -> None:
    def alter() -> None:
        with op.batch_alter_table("domains", schema=None) as batch_op:
            batch_op.drop_constraint("uq_domains_hostname", type_="unique")
            batch_op.create_index("ix_domains_hostname", ["hostname"], unique=False)
            batch_op.create_index(
                "uq_domains_verified_hostname",
                ["hostname"],
                unique=True,
                sqlite_where=VERIFIED,
                postgresql_where=VERIFIED,
            )

    _keeping_certificates(alter)


def downgrade() -> None:
    # one claim per hostname survives: the verified one, else the oldest pending one
    op.execute(
        "DELETE FROM domains WHERE status != 'verified' AND EXISTS (SELECT 1 FROM domains AS other "
        "WHERE other.hostname = domains.hostname AND other.id != domains.id "
        "AND (other.status = 'verified' OR other.id < domains.id))"
    )

    def alter() -> None:
        with op.batch_alter_table("domains", schema=None) as batch_op:
            batch_op.drop_index("uq_domains_verified_hostname")
            batch_op.drop_index("ix_domains_hostname")
            batch_op.create_unique_constraint("uq_domains_hostname", ["hostname"])

    _keeping_certificates(alter)
