"""Engine, sessions, the declarative base, and migrations.

Three session factories:

* ``write`` for everything that changes state. On SQLite a write transaction starts with
  ``BEGIN IMMEDIATE``, so concurrent writers queue on the database lock at the start instead of
  failing when a reader upgrades; on PostgreSQL row locks do that job.
* ``read`` for background readers that want one transaction around several statements.
* ``query`` for the API's read requests: its own small pool of connections in autocommit that
  cannot write (PostgreSQL ``default_transaction_read_only``, SQLite ``PRAGMA query_only``). No
  ``BEGIN``/``ROLLBACK`` round trips: under PostgreSQL's READ COMMITTED every statement takes its
  own snapshot anyway, so a read transaction bought nothing but two round trips; and a GET that
  tried to write would fail loudly instead of being silently rolled back.

No pool pre-ping (a round trip per checkout): a pooled asyncpg connection whose server went away
is noticed by asyncpg itself (the server closes the socket when it stops or restarts) and is
replaced at checkout at no cost (``_discard_closed``); one cut silently fails its statement, which
invalidates the pool (every older connection is replaced), and the request boundary retries a
read once (``boundary.py``). Alembic is the only thing that creates a schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util.concurrency import await_, in_greenlet

from ctrlplane.rowcache import TABLES, RowCache

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


T = TypeVar("T", bound="Base")

MIGRATION_LOCK_KEY = 0x63706D67  # "cpmg": a PostgreSQL advisory lock key of ctrlplane's own


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (which stores naive) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    read: async_sessionmaker[AsyncSession]
    write: async_sessionmaker[AsyncSession]
    query: async_sessionmaker[AsyncSession]
    query_engine: AsyncEngine
    rows: RowCache = field(default_factory=RowCache)
    """The hot-read cache over this database (``rowcache.py``); off until the app enables it."""

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def dispose(self) -> None:
        await self.query_engine.dispose()
        await self.engine.dispose()


def _terminate_aiosqlite(self: Any) -> None:
    """SQLAlchemy's ``terminate`` for an invalidated aiosqlite connection, without its force close
    after a cancelled graceful one. Upstream shields the graceful ``close()`` and, when the caller is
    cancelled meanwhile, also calls ``stop()``: the worker thread then takes that stop first and
    exits, and the shielded ``close()`` waits forever for the stop it queues itself (aiosqlite
    0.22) — a task left pending that holds up the event loop's shutdown. The shielded close goes on
    by itself and stops the thread, so a cancel is simply passed on."""
    if not in_greenlet():  # garbage collection: nothing can be awaited
        self._terminate_force_close()
        return
    try:
        await_(asyncio.shield(self._terminate_graceful_close()))
    except asyncio.CancelledError:
        raise
    except (TimeoutError, OSError):
        self._terminate_force_close()


AsyncAdapt_aiosqlite_connection.terminate = _terminate_aiosqlite  # type: ignore[method-assign]


POSTGRES_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
"""The settings of every connection in ctrlplane's PostgreSQL pools (the leader election's and
LISTEN's own asyncpg connections run no statement a plan matters for). asyncpg prepares each
statement, and after five runs PostgreSQL may switch a prepared statement to a generic plan, made
without the parameters' values.
A multi-tenant table is skewed (one tenant's thousand instances beside a thousand tenants' few),
and a generic plan is made for the average tenant: at 100,000 instances the instance list's
page 1 took 4.4 ms (p50) with PostgreSQL's default and 2.4 ms with custom plans only, against
2.2 ms at 1,000 (``make bench``'s scale section). Planning each run costs a fraction of a
millisecond for these statements; the parse is still cached."""


QUERY_POOL_SIZE = 15
"""Connections of the read-only query pool, kept open once opened (SQLAlchemy's default pool
allows 5 plus 10 overflow connections and closes the overflow ones as they come back)."""


def connect(url: str, **engine_args: Any) -> Database:
    is_sqlite = url.startswith("sqlite")
    memory = False
    if is_sqlite:
        path = url.split("///", 1)[1] if "///" in url else ""
        memory = not path or path == ":memory:"
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_args.setdefault("connect_args", {"timeout": 30})
    else:
        connect_args = dict(engine_args.get("connect_args", {}))
        server_settings = {**connect_args.get("server_settings", {}), **POSTGRES_SETTINGS}
        engine_args["connect_args"] = dict(connect_args, server_settings=server_settings)
    engine_args.setdefault("pool_recycle", 3600)
    engine = create_async_engine(url, **engine_args)
    _track_writes(engine)
    rows = RowCache()
    if is_sqlite:
        _configure_sqlite(engine, query_only=False)
        _track_rows(engine, rows)
    else:
        _discard_closed(engine)
    if memory or engine_args.get("isolation_level") == "AUTOCOMMIT":
        query_engine = engine  # one in-memory database has one pool; an admin engine needs no reader
    else:
        query_args = dict(engine_args, isolation_level="AUTOCOMMIT")
        # as many connections kept as it may open (SQLAlchemy's 5 + 10 overflow, all kept): with
        # more than 5 reads at once, each overflow connection was closed when it came back and a
        # new one opened for the next read (a PostgreSQL backend forked, or an aiosqlite thread)
        query_args.setdefault("pool_size", QUERY_POOL_SIZE)
        query_args.setdefault("max_overflow", 0)
        if is_sqlite:
            # its connections never begin a transaction (``_configure_sqlite``): a rollback at the
            # end of each read, and another when the connection returns to the pool, had nothing
            # to undo and cost a hop to aiosqlite's thread each
            query_args["skip_autocommit_rollback"] = True
        else:
            connect_args = dict(query_args.get("connect_args", {}))
            settings = dict(connect_args.get("server_settings", {}), default_transaction_read_only="on")
            query_args["connect_args"] = dict(connect_args, server_settings=settings)
        query_engine = create_async_engine(url, **query_args)
        if is_sqlite:
            _configure_sqlite(query_engine, query_only=True)
        else:
            _discard_closed(query_engine)
    write_engine = engine.execution_options(ctrlplane_write=True)
    return Database(
        engine=engine,
        read=async_sessionmaker(engine, expire_on_commit=False),
        write=async_sessionmaker(write_engine, expire_on_commit=False),
        query=async_sessionmaker(query_engine, expire_on_commit=False),
        query_engine=query_engine,
        rows=rows,
    )


class SessionOnDemand:
    """A session of ``factory`` made at its first use: ``session`` stands for it (anything asked of
    it makes it), ``close`` closes it if it ran a statement. A read answered from the row cache
    builds no session, takes no connection and closes nothing."""

    def __init__(self, factory: async_sessionmaker[AsyncSession]) -> None:
        self._factory = factory
        self._made: AsyncSession | None = None
        self.session = cast(AsyncSession, _OnFirstUse(self._make))

    def _make(self) -> AsyncSession:
        if self._made is None:
            self._made = self._factory()
        return self._made

    async def close(self) -> None:
        made, self._made = self._made, None
        if made is not None and made.sync_session.in_transaction():
            await made.__aexit__(None, None, None)  # AsyncSession's own close, shielded


class _OnFirstUse:
    __slots__ = ("_make",)

    def __init__(self, make: Callable[[], AsyncSession]) -> None:
        self._make = make

    def __getattr__(self, name: str) -> Any:
        return getattr(self._make(), name)


def _discard_closed(engine: AsyncEngine) -> None:
    """Replace, at checkout, a pooled asyncpg connection that asyncpg already knows is closed (the
    server ended it: a restart, a terminated backend): the pre-ping's job without its round trip."""

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        is_closed = getattr(driver, "is_closed", None)
        if is_closed is not None and is_closed():
            raise DisconnectionError("the server closed this pooled connection")


WRITTEN = "ctrlplane_written"
"""Where a connection notes the tables its transaction wrote (``written_tables``)."""
ANY_TABLE = "*"
"""Noted for a write whose table is not known (plain SQL): it may have touched any table."""
_WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "UPSERT", "WITH", "DO", "MERGE", "TRUNCATE"})


def _track_writes(engine: AsyncEngine) -> None:
    """Each transaction notes the tables it writes on its connection (cleared at ``begin``), so
    that a commit can wake only the loops that read those tables (``signals.Signal``)."""

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.info.pop(WRITTEN, None)

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def on_execute(conn: Connection, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        if context is not None and (context.isinsert or context.isupdate or context.isdelete):
            table = getattr(getattr(context.compiled, "statement", None), "table", None)
            name = getattr(table, "name", None)
            conn.info.setdefault(WRITTEN, set()).add(name if isinstance(name, str) else ANY_TABLE)
        elif _verb(statement) in _WRITE_VERBS:
            conn.info.setdefault(WRITTEN, set()).add(ANY_TABLE)


def _verb(statement: str) -> str:
    head = statement[:40].split(None, 1)
    return head[0].upper() if head else ""


async def written_tables(session: AsyncSession) -> frozenset[str] | None:
    """The tables this session's open transaction has written so far (after a flush), or None
    when it may have written any. Call it before the commit: the connection goes back to the pool
    at the commit."""
    await session.flush()
    info = (await session.connection()).info
    written = frozenset(info.get(WRITTEN, ()))
    return None if ANY_TABLE in written else written


def _configure_sqlite(engine: AsyncEngine, *, query_only: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if query_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT" or query_only:
            return  # autocommit: each statement is its own (read) transaction
        immediate = conn.get_execution_options().get("ctrlplane_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


LIST_TRIGGERS = (
    ("insert", "AFTER INSERT ON main.instances", "NEW"),
    ("delete", "AFTER DELETE ON main.instances", "OLD"),
    ("state", "AFTER UPDATE OF state ON main.instances WHEN OLD.state IS NOT NEW.state", "NEW"),
)
"""Migration 0027's triggers as SQLite ``TEMP`` triggers: a tenant's list membership changed."""


def _track_rows(engine: AsyncEngine, rows: RowCache) -> None:
    """SQLite's half of the row cache's invalidation (``rowcache.py``): every connection of this
    engine gets ``TEMP`` triggers (its own, invisible to any other process or tool) that call a
    function noting each updated or deleted cached row (and each tenant whose list of live
    instances an insert, delete or state change altered) on the connection; the notes are applied
    when the connection returns to the pool, after its transaction ended (committed or not), so a
    reader can never cache the row the transaction replaced. The triggers are created at the
    first checkout that finds the tables (a fresh database has them only after its migration);
    ``serve`` migrates before the app's engine exists."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        changed: list[tuple[str, str]] = []
        record.info["ctrlplane_rows"] = changed

        def row_changed(table: str, key: str) -> None:  # in aiosqlite's thread, inside the statement
            changed.append((table, key))

        dbapi_connection.create_function("ctrlplane_row_changed", 2, row_changed)

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.get("ctrlplane_row_triggers"):
            return
        cursor = dbapi_connection.cursor()
        try:
            names = ", ".join(f"'{table}'" for table in TABLES)
            cursor.execute(f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({names})")
            if cursor.fetchone()[0] != len(TABLES):
                return
            for table in TABLES:
                for action in ("UPDATE", "DELETE"):
                    cursor.execute(
                        f"CREATE TEMP TRIGGER IF NOT EXISTS ctrlplane_rows_{table}_{action.lower()} "
                        f"AFTER {action} ON main.{table} "
                        f"BEGIN SELECT ctrlplane_row_changed('{table}', OLD.id); END"
                    )
            for name, when, tenant in LIST_TRIGGERS:
                cursor.execute(
                    f"CREATE TEMP TRIGGER IF NOT EXISTS ctrlplane_instance_pages_{name} {when} "
                    f"BEGIN SELECT ctrlplane_row_changed('instance_pages', {tenant}.tenant_id); END"
                )
            record.info["ctrlplane_row_triggers"] = True
        finally:
            cursor.close()

    def apply(record: Any) -> None:
        changed = record.info.get("ctrlplane_rows")
        if changed:
            keys = list(changed)
            changed.clear()
            rows.invalidate(keys)

    @event.listens_for(engine.sync_engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        apply(record)

    @event.listens_for(engine.sync_engine, "invalidate")
    def on_invalidate(_dbapi_connection: Any, record: Any, _exception: Any) -> None:
        apply(record)


async def locked_row(session: AsyncSession, model: type[T], key: str, value: str, **initial: Any) -> T:
    """The row of ``model`` whose ``key`` is ``value``, created with ``initial`` if missing, locked
    for this transaction. Serialises writers that append to one sequence (an audit chain, a
    tenant's event stream): under READ COMMITTED the locked re-read sees the previous writer's
    committed values. SQLite needs no row lock: its write transactions are serial."""
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    await session.execute(insert(model).values({key: value, **initial}).on_conflict_do_nothing())
    column = getattr(model, key)
    statement = select(model).where(column == value).with_for_update()
    return (await session.execute(statement.execution_options(populate_existing=True))).scalar_one()


def alembic_config() -> Config:
    here = Path(__file__).resolve().parent
    for script_location in (here / "_migrations", here.parent / "migrations"):
        if (script_location / "env.py").exists():
            cfg = Config()
            cfg.set_main_option("script_location", str(script_location))
            return cfg
    raise RuntimeError("ctrlplane's migrations directory is missing from this installation")


async def migrate(database: Database, revision: str = "head") -> None:
    await _alembic(database, command.upgrade, revision)


async def downgrade(database: Database, revision: str = "base") -> None:
    await _alembic(database, command.downgrade, revision)


async def _alembic(database: Database, action: Callable[[Config, str], None], revision: str) -> None:
    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        action(cfg, revision)

    async with database.engine.begin() as conn:
        if database.dialect == "postgresql":
            # replicas starting together migrate one at a time; the later ones find the schema current
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await conn.run_sync(run)
