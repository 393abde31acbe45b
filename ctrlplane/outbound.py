"""The guard on every URL the control plane itself fetches (today: the JWKS document).

A URL is fetched only over ``http``/``https`` and only if **every** address its host resolves to
is a public unicast address. Refused unless ``CTRLPLANE_OUTBOUND_ALLOW_CIDRS`` lists a network
that contains them: loopback (127.0.0.0/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7),
link-local (169.254/16, fe80::/10; this includes the cloud metadata service 169.254.169.254 and
fd00:ec2::254), shared (100.64/10, e.g. 100.100.100.200), unspecified, multicast and reserved
addresses, and IPv4-mapped forms of all of these. So a configuration mistake, or a hostname whose
DNS an attacker controls, cannot point the server at its own metadata service or private network.

The check runs right before each fetch, on the addresses resolved then. The HTTP client resolves
the name again to connect, so a DNS server that changes its answer within that instant could
still redirect it; the URLs guarded today are set by the operator, not by tenants, which keeps
that window theoretical. Redirects are not followed (PyJWT's JWKS client refuses them).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedDestination(ValueError):
    """The URL's host is, or resolves to, an address the outbound policy refuses."""


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


class OutboundPolicy:
    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = parse_networks(allowed)

    def permits(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed if network.version == address.version):
            return True
        return address.is_global and not address.is_multicast

    def check(self, url: str) -> None:
        """Raise BlockedDestination unless ``url`` may be fetched now."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BlockedDestination(f"only http and https URLs with a host are fetched, not {url!r}")
        host = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            raise BlockedDestination(f"cannot resolve {host!r}: {exc}") from exc
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
        refused = sorted(str(a) for a in addresses if not self.permits(a))
        if refused or not addresses:
            raise BlockedDestination(
                f"{host!r} resolves to {', '.join(refused) or 'nothing'}, which ctrlplane does not fetch from "
                "(loopback, private, link-local, metadata or reserved); allow it with CTRLPLANE_OUTBOUND_ALLOW_CIDRS"
            )
