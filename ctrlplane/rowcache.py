"""A per-process cache of the hottest reads, invalidated by the database itself.

What it holds: a tenant's standing (status and plan: what the request boundary checks on every
read), an instance's API view (``GET /v1/instances/{id}``) and an API key (``auth.providers``:
looked up by its digest; a key is trusted from here only after ``barrier``, so a revocation
committed anywhere before the request began is always seen), and which instances a tenant's
unfiltered list pages hold. With these cached, an authenticated GET of an instance, or of a list
page, with a JWT costs no database round trip at all (docs/benchmarks.md).

How an entry stops being served, in order of how fast:

* **This process's own writes.** Every UPDATE or DELETE of a ``tenants`` or ``instances`` row names
  the row. On SQLite (one process) a ``TEMP TRIGGER`` on each of this process's connections calls
  a Python function that notes the row on the connection; the notes are applied when the
  connection goes back to the pool, after its transaction ended (``db.py``). On PostgreSQL a
  trigger (migration 0012) sends ``pg_notify('ctrlplane_rows', 'table:id')``, which the server
  delivers at commit to every replica's listener (``cluster.NotifyRelay``); a write request's
  response waits until its own notifications are back (a sync token sent after the commit arrives
  after them: notifications are delivered in commit order), so a client reads its own writes on
  the replica that took them.
* **Other replicas' writes** (PostgreSQL): when their notification arrives, normally well under a
  millisecond after the commit on one host. A read on this replica in between may still be served
  the previous row; a client that must see another replica's write at once sends
  ``Cache-Control: no-cache``, which reads through (and refreshes the entry).
* **Anything else** (a write by a process that is not a ctrlplane server, a notification lost with
  its connection): every entry expires ``CTRLPLANE_READ_CACHE_SECONDS`` (default 10) after it was
  read; while the listener is disconnected nothing is served or stored, and the cache is cleared
  when it connects again.

Writes never use the cache: a mutating request's admission reads the tenant's standing fresh, so
a suspended tenant's write is refused by every replica at once.

A read that raced a write must never cache the older row: ``ticket()`` is taken before the
database read and ``put`` refuses the entry when the row was invalidated after that ticket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

TABLES = ("tenants", "instances", "api_keys")
"""The tables whose rows are cached (and whose UPDATE/DELETE triggers name them). One more kind of
entry, ``instance_pages`` keyed by tenant, holds which instances a tenant's unfiltered list pages
show; it is invalidated by a tenant-naming notification whenever an instance of the tenant is
inserted, deleted or changes state (migration 0027)."""

Key = tuple[str, str]


class RowCache:
    """Entries by (table, id), each with its expiry. Off until ``enable``; on PostgreSQL also while
    its listener is disconnected (``live``)."""

    MAX_ENTRIES = 20_000
    MAX_INVALIDATIONS = 50_000
    MAX_PARTS = 64

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Back to a new cache's state: off (until ``enable``), empty, no listener. The test suite
        keeps a worker's engines, whose connection listeners write to this object, from test to test."""
        self.ttl = 0.0
        self.live = False
        self.barrier_hook: Callable[[], asyncio.Event] | None = None
        """Set by the PostgreSQL listener while connected: asks for a sync token's round trip, and
        gives the event set when it is back (``cluster.NotifyRelay.barrier``)."""
        self._entries: dict[Key, tuple[float, Any]] = {}
        self._invalidated: dict[Key, int] = {}
        self._counter = 0
        self._floor = 0

    def enable(self, ttl: float, *, needs_listener: bool) -> None:
        """Serve entries for ``ttl`` seconds; with ``needs_listener`` (PostgreSQL) only once
        ``connected`` says the listener hears every replica's invalidations."""
        self.ttl = ttl
        self.live = ttl > 0 and not needs_listener

    def connected(self, up: bool) -> None:
        """The listener (re)connected or lost its connection: what it may have missed is dropped."""
        self.clear()
        self.live = up and self.ttl > 0

    def get(self, table: str, key: str) -> Any:
        if not self.live:
            return None
        entry = self._entries.get((table, key))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._entries.pop((table, key), None)
            return None
        return entry[1]

    def ticket(self) -> int:
        """Take before reading the row that ``put`` will store."""
        return self._counter

    def changed_since(self, table: str, key: str, ticket: int) -> bool:
        """Whether the entry (table, key) read after ``ticket`` may no longer be the row: it was
        invalidated since, the cache was cleared, or it is not live (so nothing is known)."""
        return not self.live or ticket < self._floor or self._invalidated.get((table, key), 0) > ticket

    def put(self, table: str, key: str, ticket: int, value: Any) -> None:
        if self.changed_since(table, key, ticket):
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))  # the oldest stored
        self._entries[(table, key)] = (self._clock() + self.ttl, value)

    def get_in(self, table: str, key: str, part: Hashable) -> Any:
        """One part of a grouped entry (``put_in``)."""
        group = self.get(table, key)
        return None if group is None else group.get(part)

    def put_in(self, table: str, key: str, part: Hashable, ticket: int, value: Any) -> None:
        """Store ``value`` as one part of the entry (table, key), which groups the parts that one
        invalidation drops together (a tenant's list pages); the group expires as a whole, ``ttl``
        after its first part was stored, and holds at most ``MAX_PARTS``."""
        if self.changed_since(table, key, ticket):
            return
        group = self.get(table, key)
        if group is None or len(group) >= self.MAX_PARTS:
            group = {}
            self.put(table, key, ticket, group)
        group[part] = value

    def invalidate(self, keys: Iterable[Key]) -> None:
        self._counter += 1
        for key in keys:
            self._entries.pop(key, None)
            self._invalidated[key] = self._counter
        if len(self._invalidated) > self.MAX_INVALIDATIONS:
            self._invalidated.clear()
            self._floor = self._counter  # every older ticket is refused instead

    def invalidate_payload(self, payload: str) -> None:
        """A ``table:id`` notification."""
        table, _, key = payload.partition(":")
        if key:
            self.invalidate([(table, key)])

    def clear(self) -> None:
        self._counter += 1
        self._floor = self._counter
        self._entries.clear()
        self._invalidated.clear()

    def start_barrier(self) -> asyncio.Event | None:
        """Ask now for what ``barrier`` waits for, and give the event to wait on; None when there
        is nothing to wait for (SQLite, whose invalidations are applied already; a cache that is
        not live)."""
        hook = self.barrier_hook
        return hook() if hook is not None and self.live else None

    async def barrier(self) -> None:
        """Return once this process has applied every invalidation committed before the call
        (a write request awaits it before answering). On SQLite they are applied already."""
        started = self.start_barrier()
        if started is not None:
            await started.wait()

    def __len__(self) -> int:
        return len(self._entries)
