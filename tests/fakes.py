"""An in-memory provider for tests that need a registry but no real engine. Never registered as a
plugin, so no server can load it."""

from __future__ import annotations

from ctrlplane.provisioning.contract import ProviderHealth


class FakeProvider:
    name = "fake"

    def __init__(self, *, available: bool = True) -> None:
        self.available = available
        self.closed = False

    async def ping(self) -> ProviderHealth:
        return ProviderHealth(self.available, "fake provider" if self.available else "fake provider is down")

    async def close(self) -> None:
        self.closed = True
