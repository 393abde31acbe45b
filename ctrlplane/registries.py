"""Which registries an image may come from, checked when an instance is created or deployed.

The engine pulls an image from the registry its reference names, with the engine host's network
position: a reference such as ``169.254.169.254/x`` or ``10.0.0.5:6379/x`` would make it send HTTP
to the metadata service or a private host, and the pull's outcome (refused, timed out, not a
registry) would tell a tenant which ports are open there. So a reference that names a registry is
refused (400) when:

- the registry is an IP address literal (code ``registry_ip_literal``): a registry is a name;
- its name resolves to a loopback, private, link-local (metadata), shared, reserved or multicast
  address, or to one of the control plane's own addresses (code ``registry_address_refused``),

by the same rule as ``outbound.py``: ``CTRLPLANE_OUTBOUND_ALLOW_CIDRS`` lists networks that are
allowed anyway. ``CTRLPLANE_REGISTRY_ALLOW`` lists registries (``host``, ``host:port`` or
``*.domain``) allowed whatever they resolve to: an internal registry on a private network.

A reference without a registry (``nginx:1``, ``team/app:2``) names Docker Hub and is allowed.
The name is resolved with the machine's resolver and nothing is connected to. A name that does not
resolve now is allowed: the engine cannot pull from it either, and what it reports is classified
(``provisioning.errors.pull_failed``) so no engine text reaches the tenant. This check is made at
admission; DNS that changes between admission and pull is outside its reach.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import anyio.to_thread

from ctrlplane.errors import InvalidInput
from ctrlplane.outbound import IPAddress, OutboundPolicy, Resolver, system_resolver


class RegistryIpLiteral(InvalidInput):
    code = "registry_ip_literal"


class RegistryAddressRefused(InvalidInput):
    code = "registry_address_refused"


def registry_of(image: str) -> tuple[str, int | None] | None:
    """The registry host (and port) an image reference names, or None for Docker Hub."""
    first, slash, _ = image.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return None
    if first.startswith("["):
        host, _, rest = first[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = first.rpartition(":") if first.count(":") == 1 else (first, "", "")
    return host.lower(), int(port) if port.isdigit() else None


def _own_addresses() -> set[IPAddress]:
    found: set[IPAddress] = set()
    for name in {socket.gethostname(), socket.getfqdn()}:
        try:
            infos = socket.getaddrinfo(name, None)
        except OSError:
            continue
        for info in infos:
            try:
                found.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
            except ValueError:
                continue
    return found


class RegistryPolicy:
    def __init__(
        self,
        *,
        allowed_cidrs: Iterable[str] = (),
        allowed_registries: Iterable[str] = (),
        resolver: Resolver = system_resolver,
        own_addresses: Iterable[IPAddress] | None = None,
    ) -> None:
        self.outbound = OutboundPolicy(allowed_cidrs, resolver=resolver)
        self.allowed_registries = tuple(r.strip().lower() for r in allowed_registries if r.strip())
        self._own = set(own_addresses) if own_addresses is not None else None

    def _listed(self, host: str, port: int | None) -> bool:
        named = f"{host}:{port}" if port is not None else host
        for entry in self.allowed_registries:
            if entry in (named, host):
                return True
            if entry.startswith("*.") and host.endswith(entry[1:]):
                return True
        return False

    def _own_addresses(self) -> set[IPAddress]:
        if self._own is None:
            self._own = _own_addresses()
        return self._own

    def check(self, image: str, field: str = "image") -> None:
        """Raise unless ``image`` may be pulled (blocking: resolves the registry's name)."""
        registry = registry_of(image)
        if registry is not None:
            self._check(*registry, field=field, shown=image)

    def check_registry(self, registry: str, field: str = "registry") -> None:
        """``check`` for a bare registry (``host[:port]``), as registry credentials name it."""
        named = registry_of(registry + "/image")
        if named is not None:
            self._check(*named, field=field, shown=registry)

    def _check(self, host: str, port: int | None, *, field: str, shown: str) -> None:
        if self._listed(host, port):
            return
        shown_details = {field: shown[:256]}
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            if self._allowed_cidr(literal):
                return
            raise RegistryIpLiteral(
                f"{field}: the registry is an IP address; name it by a hostname, or an operator lists it in "
                "CTRLPLANE_REGISTRY_ALLOW",
                details={**shown_details, "rule": "registry_ip_literal"},
            )
        try:
            resolved = self.outbound.resolver(host, port or 443)
            addresses = {ipaddress.ip_address(a) for a in resolved}
        except (OSError, ValueError):
            return
        own = self._own_addresses()
        if any(not self.outbound.permits(a) or (a in own and not self._allowed_cidr(a)) for a in addresses):
            raise RegistryAddressRefused(
                f"{field}: the registry {host!r} resolves to a loopback, private, link-local or the control "
                "plane's own address, from which images are not pulled; an operator can allow it with "
                "CTRLPLANE_REGISTRY_ALLOW",
                details={**shown_details, "rule": "registry_address_refused"},
            )

    def _allowed_cidr(self, address: IPAddress) -> bool:
        return any(address in n for n in self.outbound.allowed if n.version == address.version)

    async def admit(self, image: str, field: str = "image") -> None:
        """``check`` in a worker thread: a name lookup blocks."""
        await anyio.to_thread.run_sync(self.check, image, field)

    async def admit_registry(self, registry: str, field: str = "registry") -> None:
        await anyio.to_thread.run_sync(self.check_registry, registry, field)


DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


def registry_key(image: str) -> str:
    """The registry an image reference names, as credentials are keyed: lowercase ``host`` or
    ``host:port``, and ``docker.io`` for Docker Hub under any of its names."""
    return _key(registry_of(image))


def normalized_registry(registry: str) -> str:
    """A bare ``host[:port]`` (as a credential names it) keyed like ``registry_key``."""
    return _key(registry_of(registry + "/image"))


def _key(named: tuple[str, int | None] | None) -> str:
    if named is None:
        return DOCKER_HUB
    host, port = named
    if host in _HUB_ALIASES and port is None:
        return DOCKER_HUB
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else shown
