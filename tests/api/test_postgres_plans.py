"""Every PostgreSQL connection ctrlplane opens plans each run of a prepared statement with its
parameters' values (``ctrlplane.db.POSTGRES_SETTINGS``): a generic plan, made for the average
tenant, is wrong for a skewed multi-tenant table. ``make bench``'s scale section measures the
effect on the instance list at 100,000 instances."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from ctrlplane.db import Database

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


async def test_each_session_kind_plans_with_the_parameters_values(db: Database) -> None:
    for sessions in (db.read, db.write, db.query):
        async with sessions() as session:
            assert (await session.execute(text("SHOW plan_cache_mode"))).scalar_one() == "force_custom_plan"


async def test_a_prepared_statement_run_many_times_keeps_custom_plans(db: Database) -> None:
    """PostgreSQL considers a generic plan from a prepared statement's sixth run on; a generic plan
    shows the parameter (``$1``) where a custom plan shows the value."""
    async with db.query() as session:
        await session.execute(text("PREPARE by_tenant(text) AS SELECT id FROM instances WHERE tenant_id = $1"))
        plans = [
            "\n".join((await session.execute(text("EXPLAIN EXECUTE by_tenant('ten_x')"))).scalars()) for _ in range(8)
        ]
        await session.execute(text("DEALLOCATE by_tenant"))
    assert all("'ten_x'" in plan and "$1" not in plan for plan in plans), plans
