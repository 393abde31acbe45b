"""Sleep and wake: an instance scaled to zero with its hostnames kept, started again by a request.

States: ``put_to_sleep`` takes a ``running`` instance to ``sleeping`` (desired ``sleeping``): its
replicas leave the router's rotation at once, a ``stop`` operation stops its containers (they are
kept, so waking is a ``docker start``, not a create), and the router sends its hostnames to the wake
listener (``wake.py``). ``claim_wake`` takes it from ``sleeping`` to ``starting`` (desired
``running``) and queues a ``start``; it is one conditional ``UPDATE ... WHERE state = 'sleeping'``,
so of any number of concurrent first requests, on any replica, exactly one starts it (the database
is the guard). The reconciler treats ``sleeping`` as ``stopped``.

The idle policy (``idle_timeout_seconds`` on ``instance_traffic``) is Fly-style autostop:
``enforce_idle`` puts to sleep every running instance whose newest request (or the policy's
setting, or its last wake, whichever is newest) is older than its timeout, with an
``instance.idle`` event. Other rooms call ``put_to_sleep`` (on a locked instance, in their
transaction) and may register ``IdleHandlers`` to decide what idleness means for the instances
they own (on-demand environments: sleep or terminate).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database
from ctrlplane.deployments.repository import deployment_running
from ctrlplane.errors import Conflict, InvalidState
from ctrlplane.events.service import append as append_event
from ctrlplane.instances.models import Instance
from ctrlplane.instances.observe import set_state
from ctrlplane.network.models import InstanceTraffic, Upstream
from ctrlplane.operations import queue
from ctrlplane.timeutil import utc_now

log = structlog.get_logger("ctrlplane.sleep")

SLEEPING = "sleeping"
DRAIN_SECONDS = 2.0
"""How long a stop waits after the replicas left the rotation: more than the router loop's poll
(1 s), so the withdrawal reaches Caddy first."""


async def traffic_row(session: AsyncSession, instance: Instance, *, for_update: bool = False) -> InstanceTraffic:
    """The instance's traffic row, created empty when it has none yet. Created with an insert that
    yields to a concurrent one (the router's access-log sink upserts the same row when a request
    arrives): a plain insert lost that race with a unique violation (409 on a sleep)."""
    row = await session.get(InstanceTraffic, instance.id, with_for_update=for_update, populate_existing=True)
    if row is None:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        values = {"instance_id": instance.id, "tenant_id": instance.tenant_id}
        await session.execute(insert(InstanceTraffic).values(**values).on_conflict_do_nothing())
        row = await session.get(InstanceTraffic, instance.id, with_for_update=for_update, populate_existing=True)
        assert row is not None  # inserted here or by the concurrent writer, committed before ours
    return row


async def put_to_sleep(
    session: AsyncSession, instance: Instance, *, reason: str, drain_seconds: float = DRAIN_SECONDS
) -> bool:
    """Scale a running instance to zero, keeping its hostnames (in the caller's transaction, on an
    instance the caller locked). False if it already sleeps; 409 if it is not running, is
    suspended, or a deploy runs.

    Its replicas leave the rotation now, but the ``stop`` waits ``drain_seconds``: the router pushes
    the withdrawal (sending the hostnames to the wake listener) first, so no request is sent to a
    container that is stopping. A wake before the stop ran cancels it (``claim_wake``)."""
    if instance.state == SLEEPING:
        return False
    if instance.state != "running" or instance.suspended_at is not None:
        state = "suspended" if instance.suspended_at is not None else instance.state
        raise InvalidState(
            f"only a running instance can go to sleep; this one is {state}",
            details={"state": state, "allowed": ["running"]},
        )
    deploying = await deployment_running(session, instance.id)
    if deploying is not None:
        raise Conflict(
            f"cannot put the instance to sleep while deployment {deploying} runs",
            details={"deployment_id": deploying},
        )
    now = utc_now()
    instance.desired_state = SLEEPING
    instance.version += 1
    await set_state(session, instance, SLEEPING, f"asleep: {reason}", data={"reason": reason})
    await session.execute(delete(Upstream).where(Upstream.instance_id == instance.id))
    stop = queue.enqueue(session, tenant_id=instance.tenant_id, instance_id=instance.id, kind="stop")
    stop.not_before = now + timedelta(seconds=drain_seconds)
    traffic = await traffic_row(session, instance)
    traffic.slept_at = now
    log.info("instance_sleeping", instance=instance.id, reason=reason)
    return True


async def claim_wake(session: AsyncSession, instance_id: str, handlers: IdleHandlers | None = None) -> bool:
    """Start a sleeping instance (in the caller's transaction); True for the one caller that did.
    ``handlers``' wake listeners hear of it in the same transaction."""
    now = utc_now()
    result = cast(
        CursorResult[Any],
        await session.execute(
            update(Instance)
            .where(Instance.id == instance_id, Instance.state == SLEEPING, Instance.suspended_at.is_(None))
            .values(
                state="starting",
                desired_state="running",
                status_message="woken by a request",
                version=Instance.version + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ),
    )
    if result.rowcount != 1:
        return False
    instance = await session.get(Instance, instance_id, populate_existing=True)
    assert instance is not None
    # a stop still waiting for its drain has nothing left to do: the containers are wanted again
    await queue.supersede_pending(session, instance_id, "stop", error="superseded by a wake", now=now)
    queue.enqueue(session, tenant_id=instance.tenant_id, instance_id=instance.id, kind="start")
    traffic = await traffic_row(session, instance)
    traffic.woken_at = now
    for type, data in (
        ("instance.state_changed", {"from": SLEEPING, "to": "starting", "action": "wake"}),
        ("instance.woken", {"slept_at": traffic.slept_at.isoformat() if traffic.slept_at else None}),
    ):
        await append_event(session, tenant_id=instance.tenant_id, instance_id=instance.id, type=type, data=data)
    for listener in handlers.wake_listeners if handlers else []:
        await listener(session, instance)
    log.info("instance_woken", instance=instance.id)
    return True


async def set_idle_timeout(session: AsyncSession, instance: Instance, seconds: int | None) -> InstanceTraffic:
    """Give the instance an idle policy (None: none), in the caller's transaction: the door other
    rooms (environments) use instead of the API."""
    traffic = await traffic_row(session, instance, for_update=True)
    traffic.idle_timeout_seconds = seconds
    traffic.policy_set_at = utc_now()
    return traffic


IdleHandler = Callable[[AsyncSession, Instance, InstanceTraffic], Awaitable[bool]]
"""Given an idle instance (locked, in a transaction): True if it took care of it."""
WakeListener = Callable[[AsyncSession, Instance], Awaitable[None]]
"""Told of a wake (a request claimed it), in the claiming transaction."""


@dataclass
class IdleHandlers:
    """What idleness means for instances another room owns; the first handler that answers True
    wins, and an instance no handler claims is put to sleep. Wake listeners hear of every wake."""

    handlers: list[IdleHandler] = field(default_factory=list)
    wake_listeners: list[WakeListener] = field(default_factory=list)

    def register(self, handler: IdleHandler) -> None:
        self.handlers.append(handler)

    def on_wake(self, listener: WakeListener) -> None:
        self.wake_listeners.append(listener)


def idle_since(traffic: InstanceTraffic) -> datetime | None:
    moments = [m for m in (traffic.last_request_at, traffic.policy_set_at, traffic.woken_at) if m is not None]
    return max(moments) if moments else None


async def enforce_idle(db: Database, handlers: IdleHandlers | None = None) -> list[str]:
    """Put to sleep (or hand to a handler) every running instance idle past its timeout; the ids."""
    now = utc_now()
    async with db.read() as session:
        candidates = (
            await session.execute(
                select(InstanceTraffic, Instance.version)
                .join(Instance, Instance.id == InstanceTraffic.instance_id)
                .where(InstanceTraffic.idle_timeout_seconds.is_not(None), Instance.state == "running")
            )
        ).all()
    idle = [
        (traffic.instance_id, version)
        for traffic, version in candidates
        if (since := idle_since(traffic)) is not None
        and now - since >= timedelta(seconds=traffic.idle_timeout_seconds or 0)
    ]
    done: list[str] = []
    for instance_id, version in idle:
        async with db.write() as session, session.begin():
            instance = await session.get(Instance, instance_id, with_for_update=True, populate_existing=True)
            if instance is None or instance.version != version or instance.state != "running":
                continue
            traffic = await traffic_row(session, instance, for_update=True)
            since = idle_since(traffic)
            timeout = traffic.idle_timeout_seconds
            if timeout is None or since is None or utc_now() - since < timedelta(seconds=timeout):
                continue
            if await queue.unfinished_for(session, instance.id):
                continue
            handled = False
            for handler in handlers.handlers if handlers else []:
                if await handler(session, instance, traffic):
                    handled = True
                    break
            if not handled:
                try:
                    await put_to_sleep(session, instance, reason=f"no request for {timeout}s")
                except (InvalidState, Conflict) as exc:
                    log.info("idle_sleep_skipped", instance=instance.id, reason=exc.message)
                    continue
            await append_event(
                session,
                tenant_id=instance.tenant_id,
                instance_id=instance.id,
                type="instance.idle",
                data={"idle_timeout_seconds": timeout, "last_request_at": _iso(traffic.last_request_at)},
            )
            done.append(instance.id)
    return done


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
