"""Provider plugins by name, loaded from the ``ctrlplane.providers`` entry-point group.

The registry lives on the app (``AppServices.providers``), never in a module global, so each app
built in a test has its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import structlog

from ctrlplane.errors import InvalidInput
from ctrlplane.provisioning.contract import Provider
from ctrlplane.settings import Settings

log = structlog.get_logger("ctrlplane.providers")

ENTRY_POINT_GROUP = "ctrlplane.providers"

ProviderFactory = Callable[[Settings], Provider]


class ProviderLoadError(RuntimeError):
    pass


class ProviderRegistry:
    def __init__(self, providers: Iterable[Provider] = ()) -> None:
        self._providers: dict[str, Provider] = {}
        for provider in providers:
            self.add(provider)

    def add(self, provider: Provider) -> None:
        self._providers[provider.name] = provider

    @property
    def names(self) -> list[str]:
        return sorted(self._providers)

    def __iter__(self) -> Any:
        return iter(self._providers[name] for name in self.names)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise InvalidInput(
                f"unknown provider {name!r}; available: {', '.join(self.names) or 'none'}",
                details={"provider_name": name, "available": self.names},
            ) from None

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()

    @classmethod
    def from_entry_points(cls, settings: Settings) -> ProviderRegistry:
        available = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        registry = cls()
        for name in settings.providers:
            if name not in available:
                raise ProviderLoadError(
                    f"provider {name!r} (CTRLPLANE_PROVIDERS) is not installed; installed: "
                    f"{', '.join(sorted(available)) or 'none'}"
                )
            factory: ProviderFactory = available[name].load()
            registry.add(factory(settings))
            log.info("provider_loaded", provider=name)
        return registry
