"""The Docker provider's own settings, ``CTRLPLANE_DOCKER_*``, read by its factory (never at import
time) from ``ProviderSettings.environ``; docs/configuration.md lists them."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import msgspec

from ctrlplane.provisioning.errors import ProviderLoadError
from ctrlplane_docker.isolation import DEFAULT_PIDS_LIMIT

PREFIX = "CTRLPLANE_DOCKER_"
DEFAULT_SUBNET_POOL = "10.224.0.0/12"
DEFAULT_SUBNET_SIZE = 24
VARIABLES = {
    "host_address": "HOST_ADDRESS",
    "subnet_pool": "SUBNET_POOL",
    "subnet_size": "SUBNET_SIZE",
    "pids_limit": "PIDS_LIMIT",
}


class DockerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """* ``host_address``: where instance ports are published (the engine picks the host port).
    * ``subnet_pool``, ``subnet_size``: the IPv4 range tenant networks' subnets are cut from, and
      the prefix length of one tenant's block (see ``subnets``).
    * ``pids_limit``: most processes one container may run (see ``isolation``).
    """

    host_address: str = "127.0.0.1"
    subnet_pool: str = DEFAULT_SUBNET_POOL
    subnet_size: int = DEFAULT_SUBNET_SIZE
    pids_limit: int = DEFAULT_PIDS_LIMIT

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DockerSettings:
        """The settings ``environ`` sets (an empty value is unset); ``ProviderLoadError`` naming the
        variable for a value that cannot be used."""
        values = {field: raw for field, var in VARIABLES.items() if (raw := environ.get(PREFIX + var))}
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            reason, _, where = str(exc).partition(" - at `$.")
            field = where.rstrip("`")
            shown = f"={values[field]!r}" if field in values else ""
            name = PREFIX + VARIABLES.get(field, field.upper())
            raise ProviderLoadError(f"{name}{shown}: {reason[:1].lower()}{reason[1:]}") from exc
        settings.validate()
        return settings

    def validate(self) -> None:
        try:
            pool = ipaddress.IPv4Network(self.subnet_pool, strict=True)
        except ValueError as exc:
            raise ProviderLoadError(f"{PREFIX}SUBNET_POOL must be an IPv4 network (10.224.0.0/12): {exc}") from exc
        if not pool.prefixlen <= self.subnet_size <= 30:
            raise ProviderLoadError(f"{PREFIX}SUBNET_SIZE must be from {pool.prefixlen} (the pool's prefix) to 30")
        if self.pids_limit < 16:
            raise ProviderLoadError(f"{PREFIX}PIDS_LIMIT must be at least 16")
