"""The durable operation queue.

The API records an operation in the same transaction as the desired state it serves and answers
at once; workers ``claim`` operations with a lease, run them against the provider outside any
transaction, and ``finish`` or ``retry`` them in a new one. On PostgreSQL claims use
``FOR UPDATE SKIP LOCKED`` so several workers (and several replicas) never take the same row; on
SQLite write transactions are serialised by ``BEGIN IMMEDIATE``.

An instance's operations run one at a time in creation order: an operation is claimable only when
no older unfinished operation of its instance exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import BindParameter

from ctrlplane.db import Database
from ctrlplane.ids import new_id
from ctrlplane.operations.models import Operation
from ctrlplane.timeutil import utc_now

UNFINISHED = ("pending", "running")
READS = frozenset({Operation.__tablename__})
"""What a claim reads: a commit that wrote none of it cannot have made an operation claimable."""


def enqueue(
    session: AsyncSession, *, tenant_id: str, instance_id: str, kind: str, payload: dict[str, Any] | None = None
) -> Operation:
    now = utc_now()
    operation = Operation(
        id=new_id("op"),
        tenant_id=tenant_id,
        instance_id=instance_id,
        kind=kind,
        state="pending",
        payload=payload or {},
        attempts=0,
        not_before=now,
        created_at=now,
    )
    session.add(operation)
    return operation


_OLDER = aliased(Operation)
_NOW: BindParameter[datetime] = bindparam("now")
_CLAIMABLE = and_(
    or_(
        and_(Operation.state == "pending", Operation.not_before <= _NOW),
        and_(Operation.state == "running", Operation.lease_expires_at <= _NOW),
    ),
    ~exists(
        select(_OLDER.id).where(
            _OLDER.instance_id == Operation.instance_id,
            _OLDER.id < Operation.id,
            _OLDER.state.in_(UNFINISHED),
        )
    ),
)
# Built once: an idle worker asks several times a second across a replica's workers, and building
# the statement (and its cache key) each time cost more than the query itself.
_ANY_CLAIMABLE = select(Operation.id).where(_CLAIMABLE).limit(1)
_CLAIM = select(Operation).where(_CLAIMABLE).order_by(Operation.id).limit(1).with_for_update(skip_locked=True)


async def any_claimable(session: AsyncSession, now: datetime | None = None) -> bool:
    """Whether some operation can be claimed now (as this session's transaction sees the queue)."""
    return (await session.execute(_ANY_CLAIMABLE, {"now": now or utc_now()})).first() is not None


async def claim(db: Database, *, owner: str, lease: timedelta, look_first: bool = True) -> Operation | None:
    now = utc_now()
    # An idle worker looks with a read first (the runs' claim does the same): no write transaction
    # (SQLite's BEGIN IMMEDIATE takes the database's one write lock) unless there is one to claim.
    # A worker a commit just told of new work skips the read (``look_first=False``): it would only
    # find what the commit queued, one more round trip on the way to the operation's start.
    if look_first:
        async with db.read() as session:
            if not await any_claimable(session, now):
                return None
    async with db.write() as session, session.begin():
        operation = (await session.execute(_CLAIM, {"now": now})).scalar_one_or_none()
        if operation is None:
            return None
        operation.state = "running"
        operation.lease_owner = owner
        operation.lease_expires_at = now + lease
        operation.attempts += 1
        operation.started_at = operation.started_at or now
        return operation


async def renew(db: Database, operation_id: str, *, owner: str, lease: timedelta) -> bool:
    async with db.write() as session, session.begin():
        result = await session.execute(
            update(Operation)
            .where(Operation.id == operation_id, Operation.lease_owner == owner, Operation.state == "running")
            .values(lease_expires_at=utc_now() + lease)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def locked(session: AsyncSession, operation_id: str, owner: str) -> Operation | None:
    """The operation, locked, if this worker still holds it (its lease may have been taken over)."""
    operation = (
        await session.execute(
            select(Operation)
            .where(Operation.id == operation_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if operation is None or operation.state != "running" or operation.lease_owner != owner:
        return None
    return operation


def finish(operation: Operation, *, error: str | None = None) -> None:
    operation.state = "failed" if error else "succeeded"
    operation.error = error
    operation.finished_at = utc_now()
    operation.lease_owner = None
    operation.lease_expires_at = None


def retry_later(operation: Operation, *, error: str, delay: timedelta) -> None:
    operation.state = "pending"
    operation.error = error
    operation.not_before = utc_now() + delay
    operation.lease_owner = None
    operation.lease_expires_at = None


async def unfinished_for(session: AsyncSession, instance_id: str) -> list[Operation]:
    statement = select(Operation).where(Operation.instance_id == instance_id, Operation.state.in_(UNFINISHED))
    return list((await session.execute(statement.order_by(Operation.id))).scalars())


def busy_instances() -> Select[str]:
    """The IDs of instances with an unfinished operation, as a subquery."""
    return select(Operation.instance_id).where(Operation.state.in_(UNFINISHED))


async def pending_of_kind(session: AsyncSession, instance_ids: Sequence[str], kind: str) -> set[str]:
    """Which of the instances have a pending ``kind`` operation, locking those operations: a
    worker's SKIP LOCKED claim passes them over until the caller's transaction commits."""
    statement = (
        select(Operation.instance_id)
        .where(Operation.instance_id.in_(instance_ids), Operation.kind == kind, Operation.state == "pending")
        .with_for_update()
    )
    return {instance_id for instance_id in (await session.execute(statement)).scalars() if instance_id is not None}


async def supersede_pending(session: AsyncSession, instance_id: str, kind: str, *, error: str, now: datetime) -> None:
    """Mark the instance's pending ``kind`` operations done without running them: ``error`` says why."""
    await session.execute(
        update(Operation)
        .where(Operation.instance_id == instance_id, Operation.kind == kind, Operation.state == "pending")
        .values(state="succeeded", error=error, finished_at=now)
        .execution_options(synchronize_session=False)
    )
