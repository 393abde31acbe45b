"""A node's durable event stream: append in the caller's transaction, read after a number, sign."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database
from ctrlplane.nodes.contract import Envelope, EventPage, EventType, sign_envelope
from ctrlplane.nodes.keys import SigningKeyPair, current_signing_key
from ctrlplane.nodes.models import Node, NodeEvent
from ctrlplane.secrets.crypto import MasterKeyRing
from ctrlplane.signals import Signal
from ctrlplane.timeutil import rfc3339, utc_now


async def reserve_seq(session: AsyncSession, node_id: str) -> int:
    """The node's next event number, taken now (the node row's counter, bumped atomically: it also
    serialises this node's writers until the transaction ends)."""
    statement = update(Node).where(Node.id == node_id).values(event_seq=Node.event_seq + 1).returning(Node.event_seq)
    return int((await session.execute(statement)).scalar_one())


async def append_event(
    session: AsyncSession, node_id: str, kind: EventType, payload: msgspec.Struct, *, seq: int | None = None
) -> int:
    """Stores the event under ``seq`` (from ``reserve_seq``) or a new number; commits with the
    caller's transaction, so an event exists exactly when the change it announces does."""
    if seq is None:
        seq = await reserve_seq(session, node_id)
    body: dict[str, Any] = msgspec.to_builtins(payload)
    session.add(NodeEvent(node_id=node_id, seq=seq, type=kind, payload=body, issued_at=utc_now()))
    await session.flush()
    return seq


async def events_after(session: AsyncSession, node_id: str, after: int, limit: int = 200) -> Sequence[NodeEvent]:
    statement = (
        select(NodeEvent)
        .where(NodeEvent.node_id == node_id, NodeEvent.seq > after)
        .order_by(NodeEvent.seq)
        .limit(limit)
    )
    return (await session.execute(statement)).scalars().all()


def envelope_of(event: NodeEvent, key: SigningKeyPair) -> Envelope:
    envelope = Envelope(
        event_id=event.seq,
        type=event.type,
        node_id=event.node_id,
        issued_at=rfc3339(event.issued_at),
        payload=event.payload,
        key_id="",
    )
    return sign_envelope(envelope, key.private)


async def page(session: AsyncSession, ring: MasterKeyRing, node_id: str, after: int) -> EventPage:
    batch = await events_after(session, node_id, after)
    signing = await current_signing_key(session, ring)
    items = [envelope_of(event, signing) for event in batch]
    return EventPage(items=items, last_event_id=batch[-1].seq if batch else after)


async def follow(
    db: Database, ring: MasterKeyRing, wake: Signal, node_id: str, after: int, *, poll_seconds: float
) -> AsyncIterator[Envelope | None]:
    """The node's events after ``after``, signed, then live; ``None`` after each quiet 15 s (a
    keep-alive). Ends when the node is deregistered. Each read is a short session of its own."""
    cursor = after
    quiet = 0.0
    while True:
        async with db.read() as session:
            node = await session.get(Node, node_id)
            if node is None or node.status != "active":
                return
            batch = await events_after(session, node_id, cursor)
            signing = await current_signing_key(session, ring) if batch else None
        if signing is not None:
            for event in batch:
                cursor = event.seq
                yield envelope_of(event, signing)
            quiet = 0.0
            continue
        if quiet >= 15.0:
            quiet = 0.0
            yield None
        with anyio.move_on_after(poll_seconds):
            await wake.wait(poll_seconds)
        quiet += poll_seconds
