"""The guard on every URL the control plane itself fetches: the JWKS document and the ACME CA (its
directory and every URL the CA hands back: nonces, accounts, orders, authorizations, challenges,
finalization, certificates).

A URL is fetched only over ``http``/``https`` and only if **every** address its host resolves to
is a public unicast address. Refused unless ``CTRLPLANE_OUTBOUND_ALLOW_CIDRS`` lists a network
that contains them: loopback (127.0.0.0/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7),
link-local (169.254/16, fe80::/10; this includes the cloud metadata service 169.254.169.254 and
fd00:ec2::254), shared (100.64/10, e.g. 100.100.100.200), unspecified, multicast and reserved
addresses, and IPv4-mapped forms of all of these. So a configuration mistake, or a hostname whose
DNS an attacker controls, cannot point the server at its own metadata service or private network.

**The connection goes to the address that was checked.** The guard sits where the HTTP client
opens its TCP connection (``PinnedAdapter``, a ``requests`` transport adapter whose urllib3
connections resolve through the policy): the host is resolved once, every address is vetted, and
the socket is connected to one of those very addresses. There is no second lookup for a DNS server
to answer differently (DNS rebinding). The ``Host`` header, TLS SNI and certificate verification
still use the hostname from the URL, since only the socket's destination is chosen here. Every
connection is guarded, so a redirect, or a URL a server hands back, is held to the same rule.
Proxies from the environment (``HTTPS_PROXY``...) are not used: through a proxy, the proxy would
resolve the name, out of the guard's reach.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError
from urllib3.util.connection import create_connection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
"""``(host, port)`` to the addresses it resolves to, as strings; raises ``OSError`` when it cannot."""


class BlockedDestination(ValueError):
    """The URL's host is, or resolves to, an address the outbound policy refuses."""


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def destination(url: str) -> tuple[str, int]:
    """The host and port ``url`` names; BlockedDestination unless it is http or https with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedDestination(f"only http and https URLs with a host are fetched, not {url!r}")
    try:
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise BlockedDestination(f"invalid port in {url!r}") from exc


class OutboundPolicy:
    def __init__(self, allowed: Iterable[str] = (), *, resolver: Resolver = system_resolver) -> None:
        self.allowed = parse_networks(allowed)
        self.resolver = resolver

    def permits(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed if network.version == address.version):
            return True
        return address.is_global and not address.is_multicast

    def vet(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` once; its addresses, in the resolver's order, if the policy permits all."""
        try:
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in self.resolver(host, port)))
        except (OSError, ValueError) as exc:
            raise BlockedDestination(f"cannot resolve {host!r}: {exc}") from exc
        refused = sorted(str(a) for a in addresses if not self.permits(a))
        if refused or not addresses:
            raise BlockedDestination(
                f"{host!r} resolves to {', '.join(refused) or 'nothing'}, which ctrlplane does not fetch from "
                "(loopback, private, link-local, metadata or reserved); allow it with CTRLPLANE_OUTBOUND_ALLOW_CIDRS"
            )
        return addresses

    def check(self, url: str) -> None:
        """Raise BlockedDestination unless ``url`` may be fetched now."""
        self.vet(*destination(url))

    def session(self) -> requests.Session:
        """A ``requests`` session every connection of which this policy guards."""
        session = requests.Session()
        session.trust_env = False
        guard(session, self)
        return session


class BlockedConnection(NewConnectionError):
    """urllib3's form of BlockedDestination, so that clients report it like any failed connection."""

    def __init__(self, conn: HTTPConnection, blocked: BlockedDestination) -> None:
        super().__init__(conn, str(blocked))
        self.blocked = blocked


def _pinned_socket(conn: HTTPConnection, policy: OutboundPolicy) -> socket.socket:
    try:
        addresses = policy.vet(conn._dns_host, conn.port)  # the host as the URL names it, without brackets
    except BlockedDestination as exc:
        raise BlockedConnection(conn, exc) from exc
    failure: OSError | None = None
    for address in addresses:
        try:
            return create_connection(
                (str(address), conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except OSError as exc:
            failure = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection to {conn.host}: {failure}")


def _connection_classes(policy: OutboundPolicy) -> dict[str, type[HTTPConnectionPool]]:
    class PinnedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _pinned_socket(self, policy)

    class PinnedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _pinned_socket(self, policy)

    class PinnedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    return {"http": PinnedHTTPConnectionPool, "https": PinnedHTTPSConnectionPool}


class PinnedAdapter(HTTPAdapter):
    """A ``requests`` adapter whose connections go only where ``policy`` permits, to the address it
    vetted. Proxies are refused: the proxy, not the guard, would resolve the name."""

    def __init__(self, policy: OutboundPolicy, **kwargs: Any) -> None:
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _connection_classes(self.policy)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise BlockedDestination("fetching through a proxy is not supported by the outbound guard")


def guard(session: requests.Session, policy: OutboundPolicy) -> None:
    """Make every http and https connection of ``session`` go through ``policy``."""
    adapter = PinnedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def blocked_cause(exc: BaseException) -> BlockedDestination | None:
    """The BlockedDestination behind an exception that ``requests`` raised, if that was the cause."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BlockedDestination):
            return current
        if isinstance(current, BlockedConnection):
            return current.blocked
        pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return None


def fetch_json(policy: OutboundPolicy, url: str, *, headers: dict[str, str], timeout: float) -> Any:
    """GET ``url`` as JSON through ``policy``, following no redirect. Raises BlockedDestination
    when the policy refused the destination, ``requests.RequestException`` or ``ValueError`` (not
    JSON) otherwise."""
    destination(url)
    with policy.session() as session:
        try:
            response = session.get(url, headers=headers, timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            blocked = blocked_cause(exc)
            if blocked is not None:
                raise blocked from exc
            raise
        if response.is_redirect:
            raise requests.HTTPError(f"{url} answered a redirect, which is not followed", response=response)
        response.raise_for_status()
        return response.json()


def check_target(policy: OutboundPolicy, url: str) -> None:
    """Refuse (BlockedDestination) a URL a tenant registers to be called later (a webhook, a log
    drain) if it is not http(s) with a host, carries credentials, or names or resolves to an address
    the policy refuses now. A name that does not resolve yet is accepted: every connection is
    vetted again when it is made."""
    parts = urlsplit(url)
    host, port = destination(url)
    if parts.username is not None or parts.password is not None:
        raise BlockedDestination("a URL with user:password@ is not accepted; put a token in the path or query")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        try:
            resolved = policy.resolver(host, port)
        except OSError:
            return
        literal = None
    if literal is not None:
        resolved = [str(literal)]
    refused = sorted(a for a in resolved if not policy.permits(ipaddress.ip_address(a)))
    if refused:
        raise BlockedDestination(
            f"{host!r} is or resolves to {', '.join(refused)}, which ctrlplane does not send to "
            "(loopback, private, link-local, metadata or reserved); allow it with CTRLPLANE_OUTBOUND_ALLOW_CIDRS"
        )


def redacted(url: str) -> str:
    """``url`` without its query and fragment (where receivers' tokens usually are), for logs and audit."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
