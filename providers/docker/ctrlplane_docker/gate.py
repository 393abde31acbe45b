"""Keeping a tenant's network while this process puts containers on it.

A deprovision removes the tenant's network once no container of the tenant is left. That check
and the removal are two engine calls, and so are a provision's "find the network" and "create and
start a container on it": interleaved, the network can go between a provision finding it and its
container's endpoint being made. The engine then fails the create or start (handled: the network
is made again and the container moved onto it), but its own check of a network's endpoints is not
atomic with a concurrent start either, and a container can end up running on a network that no
longer exists. So within one process they never interleave: putting containers on a tenant's
network holds it *in use* (any number at once), and removing it waits until nobody uses it and
keeps new users out until it is done.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class NetworkGate:
    """Users of a tenant's network share it; a removal waits until the tenant has none and keeps
    new ones out until it is done. Other tenants are never held up, and the engine calls of a
    removal run without the gate's lock. Users are preferred: a removal waits while any come and
    go (a nested ``using`` on a thread that already uses the network must never wait)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._users: Counter[str] = Counter()
        self._removing: set[str] = set()

    @contextmanager
    def using(self, tenant_id: str) -> Iterator[None]:
        """The tenant's network must not be removed until the block ends."""
        with self._condition:
            self._condition.wait_for(lambda: tenant_id not in self._removing)
            self._users[tenant_id] += 1
        try:
            yield
        finally:
            with self._condition:
                self._users[tenant_id] -= 1
                if not self._users[tenant_id]:
                    del self._users[tenant_id]
                    self._condition.notify_all()

    @contextmanager
    def removing(self, tenant_id: str) -> Iterator[None]:
        """Wait until nobody in this process uses the tenant's network; nobody starts to until the
        block ends (a check and a removal)."""
        with self._condition:
            self._condition.wait_for(lambda: tenant_id not in self._users and tenant_id not in self._removing)
            self._removing.add(tenant_id)
        try:
            yield
        finally:
            with self._condition:
                self._removing.discard(tenant_id)
                self._condition.notify_all()
