"""Alembic environment. ctrlplane passes a live connection in ``config.attributes["connection"]``;
the alembic command line instead builds one from ``CTRLPLANE_DATABASE_URL`` (or the SQLite default)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from ctrlplane.models import metadata

config = context.config


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    from ctrlplane.db import connect
    from ctrlplane.settings import Settings

    database = connect(Settings.from_env().resolved_database_url)
    async with database.engine.begin() as connection:
        await connection.run_sync(run_with)
    await database.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    asyncio.run(run_standalone())
