"""The provider contract: what ctrlplane asks of a runtime (Docker, Kubernetes, ...).

Providers are plugins registered under the ``ctrlplane.providers`` entry-point group; ctrlplane
never imports them. This module grows with the instances work (provision, deploy, logs, ...); the
foundation needs only a provider's name and whether it answers.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec


class ProviderHealth(msgspec.Struct, frozen=True):
    available: bool
    message: str


@runtime_checkable
class Provider(Protocol):
    """A runtime for instances. Every call is idempotent and keyed by ctrlplane IDs."""

    name: str

    async def ping(self) -> ProviderHealth:
        """Whether the runtime answers right now; never raises."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...
