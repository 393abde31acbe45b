"""The durable event log and its streams.

``append`` writes an event in the caller's transaction, numbering it under a lock on the tenant's
``event_streams`` row, so within a tenant numbers commit in order: a reader that has seen event N
will never later find an uncommitted N-1 appear. That is what lets a reconnect with
``Last-Event-ID: N`` resume exactly after N, with no gap and no duplicate.

Streams are served by ``fanout.py``: one reader per replica and tenant waits on the ``events``
signal, which is notified after commits in this process, and polls, so an event committed by
another process is seen within ``CTRLPLANE_EVENT_POLL_SECONDS``.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database
from ctrlplane.events import schemas
from ctrlplane.events.models import Event, EventStream
from ctrlplane.ids import new_id
from ctrlplane.timeutil import utc_now

REPLAY_BATCH = 500


async def append(
    session: AsyncSession, *, tenant_id: str, instance_id: str | None, type: str, data: dict[str, Any]
) -> Event:
    seq = await _next_seq(session, tenant_id)
    event = Event(
        id=new_id("evt"),
        tenant_id=tenant_id,
        seq=seq,
        instance_id=instance_id,
        type=type,
        data=data,
        created_at=utc_now(),
    )
    session.add(event)
    await session.flush()
    return event


async def _next_seq(session: AsyncSession, tenant_id: str) -> int:
    """The tenant's next event number, in one round trip: an upsert that creates the stream's row
    or increments it, and (PostgreSQL) keeps it locked until the transaction ends, so numbers
    commit in order; SQLite's write transactions are serial anyway."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(EventStream)
        .values(tenant_id=tenant_id, last_seq=1)
        .on_conflict_do_update(index_elements=[EventStream.tenant_id], set_={"last_seq": EventStream.last_seq + 1})
        .returning(EventStream.last_seq)
    )
    seq = (await session.execute(statement)).scalar_one()
    stream = session.identity_map.get(session.sync_session.identity_key(EventStream, tenant_id))
    if stream is not None:
        session.expire(stream)
    return int(seq)


def to_schema(event: Event) -> schemas.Event:
    return schemas.Event(
        id=event.seq,
        event_id=event.id,
        tenant_id=event.tenant_id,
        instance_id=event.instance_id,
        type=event.type,
        data=event.data,
        created_at=event.created_at,
    )


async def read_after(
    db: Database, *, tenant_id: str, instance_id: str | None, after: int, limit: int
) -> list[schemas.Event]:
    statement = select(Event).where(Event.tenant_id == tenant_id, Event.seq > after)
    if instance_id is not None:
        statement = statement.where(Event.instance_id == instance_id)
    # Shielded: a stream's client that goes away cancels the stream, and a cancel landing inside the
    # query would make the pool terminate the connection, whose graceful close on aiosqlite can then
    # wait forever (a task left pending that holds up the server's shutdown). The read is short; the
    # cancel takes effect right after it.
    with anyio.CancelScope(shield=True):
        async with db.read() as session:
            rows = (await session.execute(statement.order_by(Event.seq).limit(limit))).scalars()
            events = [to_schema(row) for row in rows]
    return events


async def page(
    session: AsyncSession, *, tenant_id: str, instance_id: str | None, after: int, limit: int
) -> schemas.EventPage:
    statement = select(Event).where(Event.tenant_id == tenant_id)
    if instance_id is not None:
        statement = statement.where(Event.instance_id == instance_id)
    total = (await session.execute(select(func.count()).select_from(statement.subquery()))).scalar_one()
    rows = list(
        (await session.execute(statement.where(Event.seq > after).order_by(Event.seq).limit(limit + 1))).scalars()
    )
    more = len(rows) > limit
    items = [to_schema(row) for row in rows[:limit]]
    return schemas.EventPage(items=items, next_cursor=str(items[-1].id) if more and items else None, total=total)


def encode(event: schemas.Event) -> str:
    return msgspec.json.encode(event).decode()


async def last_seq(session: AsyncSession, tenant_id: str) -> int:
    """The number of the tenant's newest committed event (0 for none)."""
    found = await session.get(EventStream, tenant_id)
    return found.last_seq if found is not None else 0


async def events_after(session: AsyncSession, *, tenant_id: str, after: int, limit: int) -> list[schemas.Event]:
    """The tenant's events numbered after ``after``, oldest first, in the caller's transaction."""
    statement = select(Event).where(Event.tenant_id == tenant_id, Event.seq > after).order_by(Event.seq).limit(limit)
    return [to_schema(row) for row in (await session.execute(statement)).scalars()]
