"""Provider plugins by name, loaded from the ``ctrlplane.providers`` entry-point group.

The registry lives on the app (``AppServices.providers``), never in a module global, so each app
built in a test has its own. An entry point names a ``ProviderFactory``: it is called with the
``ProviderSettings`` that ``provider_settings`` builds from the core's ``Settings``, never with
those ``Settings`` themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

import anyio
import structlog

from ctrlplane.errors import InvalidInput, ProviderUnavailable
from ctrlplane.provisioning.contract import AdmittingProvider, Provider, ProviderHealth, ProviderSettings
from ctrlplane.provisioning.errors import ProviderLoadError as ProviderLoadError
from ctrlplane.settings import Settings

log = structlog.get_logger("ctrlplane.providers")

ENTRY_POINT_GROUP = "ctrlplane.providers"

ProviderFactory = Callable[[ProviderSettings], Provider]


def provider_settings(settings: Settings, *, environ: Mapping[str, str] | None = None) -> ProviderSettings:
    """What of ``settings`` a provider gets; ``environ`` (None: the process environment) is where
    it reads its own variables."""
    return ProviderSettings(
        cluster_name=settings.cluster_name, installation_id=settings.installation_id, environ=environ
    )


class ProviderRegistry:
    """Providers by name. ``require_available`` answers API callers with 503 when a provider's
    runtime does not answer, so a request that would queue work for a dead engine says so instead
    of accepting it silently. Health is kept fresh by ``refresh`` (a background loop in a running
    server), so requests read it without calling the provider; a stale or unknown one is pinged."""

    HEALTH_TTL_SECONDS = 2.0
    PING_TIMEOUT_SECONDS = 5.0

    def __init__(self, providers: Iterable[Provider] = ()) -> None:
        self._providers: dict[str, Provider] = {}
        self._health: dict[str, tuple[float, ProviderHealth]] = {}
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

    async def health(self, name: str) -> ProviderHealth:
        self.get(name)
        checked = self._health.get(name)
        now = time.monotonic()
        if checked is not None and now - checked[0] < self.HEALTH_TTL_SECONDS:
            return checked[1]
        health = await self._ping(name)
        self._health[name] = (time.monotonic(), health)
        return health

    async def _ping(self, name: str) -> ProviderHealth:
        health: ProviderHealth | None = None
        with anyio.move_on_after(self.PING_TIMEOUT_SECONDS):
            health = await self.get(name).ping()
        return health or ProviderHealth(False, f"no answer within {self.PING_TIMEOUT_SECONDS:g}s")

    async def refresh(self) -> None:
        for name in self.names:
            self._health[name] = (time.monotonic(), await self._ping(name))

    async def require_available(self, name: str) -> Provider:
        health = await self.health(name)
        if not health.available:
            raise ProviderUnavailable(f"provider {name!r} is unavailable: {health.message}", details={"provider": name})
        return self.get(name)

    async def admit(self, name: str, tenant_id: str) -> None:
        """Refuse (503 with the provider's ``code``) a new instance the provider has no room for."""
        provider = self.get(name)
        if not isinstance(provider, AdmittingProvider):
            return
        try:
            await provider.admit(tenant_id)
        except ProviderUnavailable as exc:
            if type(exc) is ProviderUnavailable:  # the runtime did not answer (not a refusal with a code of its own)
                self._health[name] = (time.monotonic(), ProviderHealth(False, str(exc)))
            raise

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()

    @classmethod
    def from_entry_points(cls, settings: Settings) -> ProviderRegistry:
        """The providers ``settings.providers`` names, each built by its factory; ``ProviderLoadError``
        when one is not installed or its factory refuses its settings."""
        available = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        handed = provider_settings(settings)
        registry = cls()
        for name in settings.providers:
            if name not in available:
                raise ProviderLoadError(
                    f"provider {name!r} (CTRLPLANE_PROVIDERS) is not installed; installed: "
                    f"{', '.join(sorted(available)) or 'none'}"
                )
            factory: ProviderFactory = available[name].load()
            registry.add(factory(handed))
            log.info("provider_loaded", provider=name)
        return registry
