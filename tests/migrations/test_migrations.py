"""Alembic is the only way a schema is made: it must go up, down and up again on both databases,
and what it makes must equal the models."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from ctrlplane.db import Database, downgrade, migrate
from ctrlplane.models import metadata


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
