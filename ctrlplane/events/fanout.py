"""One reader of a tenant's events per replica, however many streams follow it.

Every open event stream (SSE on ``/v1/events`` or ``/v1/instances/{id}/events``) of a tenant is
served by the replica's ``TenantFeed`` of that tenant: one task that reads the tenant's new events
once per wake-up (the ``events`` signal after a commit here, a replica relay's notification, or the
poll interval) and keeps the most recent ones in memory. Streams take their events from that buffer
and wait on the feed, so a new event costs one database read per replica and tenant, not one per
subscriber. A stream whose position is older than the buffer (a ``Last-Event-ID`` replay, or a
reader slower than the buffer is long) reads the database itself until it has caught up.

Events are numbered per tenant and commit in number order (``service.append``), so a feed that
has read up to N knows every event up to N is committed and none will appear below it later.
The feed starts at the tenant's newest committed number and stops when its last stream closes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator

import anyio
import structlog

from ctrlplane.db import Database
from ctrlplane.events import schemas
from ctrlplane.events.models import Event
from ctrlplane.events.service import REPLAY_BATCH, last_seq, read_after
from ctrlplane.signals import Signal

log = structlog.get_logger("ctrlplane.events")

READS = frozenset({Event.__tablename__})
"""A feed reads new events only: other commits do not wake it."""

BUFFER = 2000
"""Events a feed keeps; a stream further behind than this reads the database."""


class TenantFeed:
    def __init__(self, db: Database, broker: Signal, tenant_id: str, poll_seconds: float) -> None:
        self.db, self.broker, self.tenant_id, self.poll_seconds = db, broker, tenant_id, poll_seconds
        self.events: list[schemas.Event] = []
        self.ids: list[int] = []
        self.base = 0
        """Events numbered up to ``base`` are not in the buffer."""
        self.cursor = 0
        """The newest event read: every event up to it is committed."""
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None

    def since(self, cursor: int, instance_id: str | None) -> list[schemas.Event]:
        """Buffered events after ``cursor`` (which must be at least ``base``), of one instance or all."""
        found = self.events[bisect.bisect_right(self.ids, cursor) :]
        return found if instance_id is None else [e for e in found if e.instance_id == instance_id]

    def _keep(self, batch: list[schemas.Event]) -> None:
        self.events.extend(batch)
        self.ids.extend(e.id for e in batch)
        self.cursor = batch[-1].id
        if len(self.events) > 2 * BUFFER:
            drop = len(self.events) - BUFFER
            self.base = self.ids[drop - 1]
            del self.events[:drop], self.ids[:drop]
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def run(self) -> None:
        while not self.ready.is_set():
            try:
                with anyio.CancelScope(shield=True):
                    async with self.db.read() as session:
                        self.base = self.cursor = await last_seq(session, self.tenant_id)
                self.ready.set()
            except Exception as exc:  # noqa: BLE001 - a database outage: keep trying, streams wait
                log.warning("event_feed_read_failed", tenant=self.tenant_id, error=str(exc))
                await asyncio.sleep(self.poll_seconds)
        while True:
            try:
                batch = await read_after(
                    self.db, tenant_id=self.tenant_id, instance_id=None, after=self.cursor, limit=REPLAY_BATCH
                )
            except Exception as exc:  # noqa: BLE001 - as above
                log.warning("event_feed_read_failed", tenant=self.tenant_id, error=str(exc))
                await asyncio.sleep(self.poll_seconds)
                continue
            if batch:
                self._keep(batch)
            if len(batch) < REPLAY_BATCH:
                await self.broker.wait(self.poll_seconds, interest=READS)


class EventFeeds:
    """The replica's feeds, by tenant (``AppServices.feeds``)."""

    def __init__(self, db: Database, broker: Signal, poll_seconds: float) -> None:
        self.db, self.broker, self.poll_seconds = db, broker, poll_seconds
        self.feeds: dict[str, TenantFeed] = {}

    def _subscribe(self, tenant_id: str) -> TenantFeed:
        feed = self.feeds.get(tenant_id)
        if feed is None:
            feed = self.feeds[tenant_id] = TenantFeed(self.db, self.broker, tenant_id, self.poll_seconds)
            feed.task = asyncio.get_running_loop().create_task(feed.run(), name=f"event-feed-{tenant_id}")
        feed.subscribers += 1
        return feed

    def _unsubscribe(self, feed: TenantFeed) -> None:
        feed.subscribers -= 1
        if feed.subscribers == 0:
            if self.feeds.get(feed.tenant_id) is feed:
                del self.feeds[feed.tenant_id]
            if feed.task is not None:
                feed.task.cancel()

    def close(self) -> None:
        for feed in self.feeds.values():
            if feed.task is not None:
                feed.task.cancel()
        self.feeds.clear()

    async def stream(
        self, *, tenant_id: str, instance_id: str | None, after: int, heartbeat_seconds: float = 15.0
    ) -> AsyncIterator[schemas.Event | None]:
        """Past events after ``after``, then live ones, forever. Yields None as a heartbeat."""
        feed = self._subscribe(tenant_id)
        try:
            await feed.ready.wait()
            cursor = after
            quiet_since = time.monotonic()
            while True:
                if cursor < feed.base:
                    snapshot = feed.cursor
                    batch = await read_after(
                        self.db, tenant_id=tenant_id, instance_id=instance_id, after=cursor, limit=REPLAY_BATCH
                    )
                    for event in batch:
                        cursor = event.id
                        yield event
                    if len(batch) < REPLAY_BATCH:
                        cursor = max(cursor, snapshot)
                    quiet_since = time.monotonic()
                    continue
                changed = feed.changed
                fresh = feed.since(cursor, instance_id)
                cursor = max(cursor, feed.cursor)
                if fresh:
                    for event in fresh:
                        yield event
                    quiet_since = time.monotonic()
                    continue
                left = heartbeat_seconds - (time.monotonic() - quiet_since)
                if left <= 0:
                    quiet_since = time.monotonic()
                    yield None
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
        finally:
            self._unsubscribe(feed)
