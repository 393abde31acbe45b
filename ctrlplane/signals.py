"""Wake-ups: a committed change wakes whoever waits for it now rather than at its next poll.

``notify()`` wakes this process's waiters and, when a replica relay is attached
(``cluster.NotifyRelay`` on PostgreSQL), tells the other replicas too; ``wake()`` is local only.
Waiters always poll too (with a timeout), so a change is still seen if a wake-up is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Signal:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.publish: Callable[[], None] | None = None

    async def notify(self) -> None:
        self.wake()
        if self.publish is not None:
            self.publish()

    def wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def armed(self) -> asyncio.Event:
        """The event the next wake-up sets: take it *before* looking at what may change, then
        ``wait(timeout, armed)``, so a wake-up that comes while looking is not lost."""
        return self._event

    async def wait(self, timeout: float, armed: asyncio.Event | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((armed or self._event).wait(), timeout)


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
