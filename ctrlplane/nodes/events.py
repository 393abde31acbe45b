"""A node's durable event stream: append in the caller's transaction, read after a number, sign."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.nodes.contract import Envelope, EventType, sign_envelope
from ctrlplane.nodes.keys import SigningKeyPair
from ctrlplane.nodes.models import Node, NodeEvent
from ctrlplane.timeutil import rfc3339, utc_now


async def append_event(session: AsyncSession, node_id: str, kind: EventType, payload: msgspec.Struct) -> int:
    """Numbers the event (the node row's counter, bumped atomically) and stores it; commits with the
    caller's transaction, so an event exists exactly when the change it announces does."""
    statement = update(Node).where(Node.id == node_id).values(event_seq=Node.event_seq + 1).returning(Node.event_seq)
    seq = (await session.execute(statement)).scalar_one()
    body: dict[str, Any] = msgspec.to_builtins(payload)
    session.add(NodeEvent(node_id=node_id, seq=seq, type=kind, payload=body, issued_at=utc_now()))
    await session.flush()
    return int(seq)


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
