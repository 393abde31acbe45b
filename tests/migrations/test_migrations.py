"""Alembic is the only way a schema is made: it must go up, down and up again on both databases,
and what it makes must equal the models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from ctrlplane.db import Database, downgrade, migrate
from ctrlplane.models import metadata
from tests.api.test_instances import create, tenant_token
from tests.conftest import Api

pytestmark = pytest.mark.dialects("migrations and the drift check are per dialect")


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def test_upgrade_downgrade_upgrade(db: Database) -> None:
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_tables) == set(metadata.tables)
    await downgrade(db, "base")
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_tables) == set()
    await migrate(db)
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_tables) == set(metadata.tables)


async def test_models_and_migrations_do_not_drift(db: Database) -> None:
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_migrating_twice_changes_nothing(db: Database) -> None:
    await migrate(db)
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_downgrading_0011_keeps_the_rows_that_hang_off_the_altered_tables(api: Api, db: Database) -> None:
    """Dropping 0011's version columns must not rebuild domains or health_checks: with foreign keys
    on, dropping the old copy of a table would cascade to certificates and check results."""
    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    base = f"/v1/instances/{instance['id']}"
    domain = await api.client.post(f"{base}/domains", json={"hostname": "shop.example.com"}, headers=token)
    assert domain.status_code == 201, domain.text
    check = await api.client.post(
        f"{base}/health/checks", json={"name": "tcp", "type": "tcp", "target": "localhost:8080"}, headers=token
    )
    assert check.status_code == 201, check.text
    now = datetime.now(UTC)
    async with db.write() as session, session.begin():
        await session.execute(
            metadata.tables["certificates"].insert(),
            {"id": "cert_1", "tenant_id": tenant_id, "domain_id": domain.json()["id"], "status": "pending",
             "created_at": now, "updated_at": now},
        )  # fmt: skip
        await session.execute(
            metadata.tables["health_check_results"].insert(),
            {"id": "hcr_1", "check_id": check.json()["id"], "tenant_id": tenant_id, "instance_id": instance["id"],
             "status": "up", "latency_ms": 1.0, "message": "", "checked_at": now},
        )  # fmt: skip
    await downgrade(db, "0010")
    try:
        async with db.engine.connect() as conn:
            for table in ("domains", "certificates", "health_checks", "health_check_results"):
                count = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                assert count == 1, f"{table} lost its rows in the downgrade"
    finally:
        await migrate(db)
