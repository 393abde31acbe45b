"""Wake-ups: a committed change wakes whoever waits for it now rather than at its next poll.

``notify()`` wakes this process's waiters and, when a replica relay is attached
(``cluster.NotifyRelay`` on PostgreSQL), tells the other replicas too; ``wake()`` is local only.
Waiters always poll too (with a timeout), so a change is still seen if a wake-up is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


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

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
