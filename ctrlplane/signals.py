"""Wake-ups: a committed change wakes whoever waits for it now rather than at its next poll.

``notify()`` wakes this process's waiters and, when a replica relay is attached
(``cluster.NotifyRelay`` on PostgreSQL), tells the other replicas too; ``wake()`` is local only.
Waiters always poll too (with a timeout), so a change is still seen if a wake-up is lost.

A wake-up may name the tables the commit wrote (``db.written_tables``), and a waiter may name the
tables it reads (its *interest*): a commit then wakes only the waiters whose interest it touched,
so a write request that enqueues no operation does not send every operation worker to look for
one. A wake-up without tables, and a waiter without an interest, match everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

Interest = frozenset[str] | None


class Signal:
    def __init__(self) -> None:
        self._events: dict[Interest, asyncio.Event] = {}
        self.publish: Callable[[Collection[str] | None], None] | None = None

    async def notify(self, tables: Collection[str] | None = None) -> None:
        self.wake(tables)
        if self.publish is not None:
            self.publish(tables)

    def wake(self, tables: Collection[str] | None = None) -> None:
        for interest in list(self._events):
            if tables is None or interest is None or not interest.isdisjoint(tables):
                self._events.pop(interest).set()

    def armed(self, interest: Interest = None) -> asyncio.Event:
        """The event the next wake-up that meets ``interest`` sets: take it *before* looking at
        what may change, then ``wait(timeout, armed)``, so a wake-up that comes while looking is
        not lost."""
        event = self._events.get(interest)
        if event is None:
            event = self._events[interest] = asyncio.Event()
        return event

    async def wait(self, timeout: float, armed: asyncio.Event | None = None, interest: Interest = None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((armed or self.armed(interest)).wait(), timeout)


class Absence:
    """A read that found nothing stays believed until a commit writes one of ``tables`` (in this
    process, or in another replica's through the relay) or ``seconds`` pass. A loop that wakes at
    every commit of its interest, in an installation that has none of what it serves (no webhook
    endpoint, no environment), so skips its read instead of joining the crowd of reads every
    commit sends to the database; ``seconds`` bounds how long a lost wake-up can hide a change."""

    def __init__(self, signal: Signal, tables: frozenset[str], seconds: float) -> None:
        self.signal, self.tables, self.seconds = signal, tables, seconds
        self._changed: asyncio.Event | None = None
        self._until = 0.0

    async def present(self, read: Callable[[], Awaitable[bool]]) -> bool:
        """``read()`` (whether anything is there), unless nothing was there at the last read and
        nothing since could have changed that."""
        if self._changed is not None and not self._changed.is_set() and time.monotonic() < self._until:
            return False
        changed = self.signal.armed(self.tables)  # taken before the read: a commit during it counts
        found = await read()
        self._changed, self._until = (None, 0.0) if found else (changed, time.monotonic() + self.seconds)
        return found


class Announcements(Generic[T]):
    """News of one key for whoever in this process awaits that key right now: nothing is kept for a
    later waiter, and other replicas do not hear it (they learn the same from the database)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[T]]] = {}

    def announce(self, key: str, value: T) -> None:
        for future in self._waiting.pop(key, set()):
            if not future.done():
                future.set_result(value)

    @contextlib.contextmanager
    def awaiting(self, key: str) -> Iterator[asyncio.Future[T]]:
        """A future done with the first value announced for ``key`` while the block runs."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, set()).add(future)
        try:
            yield future
        finally:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiting[key]
            future.cancel()
