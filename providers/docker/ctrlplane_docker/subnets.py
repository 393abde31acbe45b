"""Tenant network subnets from a pool ctrlplane owns (``CTRLPLANE_DOCKER_SUBNET_POOL`` cut into
``/CTRLPLANE_DOCKER_SUBNET_SIZE`` blocks), instead of dockerd's ``default-address-pools``, whose
defaults hold about 30 bridge networks.

The engine is the only record of what is taken: every network on it (this installation's, another
installation's, dockerd's own) that overlaps the pool takes the blocks it covers. Two installations
sharing the engine can still pick the same free block at once; the loser's create fails with
"overlaps" and it moves on to the next block (see ``DockerProvider._create_tenant_network``). Each
tenant starts its search at a block derived from its ID, so concurrent creators rarely collide.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ctrlplane.provisioning.errors import ProviderUnavailable


class SubnetPoolExhausted(ProviderUnavailable):
    """No free block is left in the pool: a new tenant network cannot be created until another
    tenant's last instance goes or the pool is made larger."""

    code = "subnet_pool_exhausted"


class SubnetPool:
    """The blocks of ``pool`` of prefix length ``size``; ``free`` names those no network covers."""

    def __init__(self, pool: str, size: int) -> None:
        self.network = ipaddress.IPv4Network(pool, strict=True)
        if not self.network.prefixlen <= size <= 30:
            raise ValueError(f"subnet size /{size} must be from /{self.network.prefixlen} (the pool) to /30")
        self.size = size
        self.count = 2 ** (size - self.network.prefixlen)
        self._base = int(self.network.network_address)
        self._block = 2 ** (32 - size)

    def __str__(self) -> str:
        return f"{self.network} in /{self.size} blocks"

    def block(self, index: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((self._base + index * self._block, self.size))

    def taken(self, subnets: Iterable[ipaddress.IPv4Network]) -> set[int]:
        """Indexes of the blocks that any of ``subnets`` overlaps."""
        taken: set[int] = set()
        last = self._base + self.count * self._block - 1
        for subnet in subnets:
            first_address = max(int(subnet.network_address), self._base)
            last_address = min(int(subnet.broadcast_address), last)
            if first_address > last_address:
                continue
            taken.update(
                range((first_address - self._base) // self._block, (last_address - self._base) // self._block + 1)
            )
        return taken

    def free(self, subnets: Iterable[ipaddress.IPv4Network], *, start_key: str) -> Iterator[ipaddress.IPv4Network]:
        """Free blocks, starting at one derived from ``start_key`` and wrapping around."""
        taken = self.taken(subnets)
        start = int.from_bytes(hashlib.sha256(start_key.encode()).digest()[:8], "big") % self.count
        for offset in range(self.count):
            index = (start + offset) % self.count
            if index not in taken:
                yield self.block(index)


def network_subnets(networks: Iterable[Mapping[str, Any]]) -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets of the engine's networks, as its network list reports them."""
    found: list[ipaddress.IPv4Network] = []
    for network in networks:
        for config in (network.get("IPAM") or {}).get("Config") or []:
            try:
                subnet = ipaddress.ip_network(str((config or {}).get("Subnet") or ""), strict=False)
            except ValueError:
                continue
            if isinstance(subnet, ipaddress.IPv4Network):
                found.append(subnet)
    return found
