"""The durable event log and its streams.

``append`` writes an event in the caller's transaction, numbering it under a lock on the tenant's
``event_streams`` row, so within a tenant numbers commit in order: a reader that has seen event N
will never later find an uncommitted N-1 appear. That is what lets a reconnect with
``Last-Event-ID: N`` resume exactly after N, with no gap and no duplicate.

Stream readers wait on the ``events`` signal, which is notified after commits in this process, and
poll, so an event committed by another process is seen within ``CTRLPLANE_EVENT_POLL_SECONDS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database, locked_row
from ctrlplane.events import schemas
from ctrlplane.events.models import Event, EventStream
from ctrlplane.ids import new_id
from ctrlplane.signals import Signal
from ctrlplane.timeutil import utc_now

REPLAY_BATCH = 500


async def append(
    session: AsyncSession, *, tenant_id: str, instance_id: str | None, type: str, data: dict[str, Any]
) -> Event:
    stream = await locked_row(session, EventStream, "tenant_id", tenant_id, last_seq=0)
    stream.last_seq += 1
    event = Event(
        id=new_id("evt"),
        tenant_id=tenant_id,
        seq=stream.last_seq,
        instance_id=instance_id,
        type=type,
        data=data,
        created_at=utc_now(),
    )
    session.add(event)
    await session.flush()
    return event


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


async def stream(
    db: Database,
    broker: Signal,
    *,
    tenant_id: str,
    instance_id: str | None,
    after: int,
    poll_seconds: float,
    heartbeat_seconds: float = 15.0,
) -> AsyncIterator[schemas.Event | None]:
    """Past events after ``after``, then live ones, forever. Yields None as a heartbeat."""
    cursor = after
    idle = 0.0
    while True:
        batch = await read_after(db, tenant_id=tenant_id, instance_id=instance_id, after=cursor, limit=REPLAY_BATCH)
        for event in batch:
            cursor = event.id
            yield event
        if len(batch) == REPLAY_BATCH:
            continue
        if batch:
            idle = 0.0
        await broker.wait(poll_seconds)
        idle += poll_seconds
        if idle >= heartbeat_seconds:
            idle = 0.0
            yield None


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
