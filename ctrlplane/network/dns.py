"""DNS look-ups for domain verification, through the resolver ``CTRLPLANE_DNS_RESOLVER`` names
(``host`` or ``host:port``; unset: the system's resolvers)."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from ctrlplane.errors import Unavailable
from ctrlplane.settings import Settings


def resolver_for(settings: Settings) -> dns.asyncresolver.Resolver:
    if settings.dns_resolver is None:
        resolver = dns.asyncresolver.Resolver(configure=True)
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, _, port = (
            settings.dns_resolver.rpartition(":")
            if ":" in settings.dns_resolver
            else (
                settings.dns_resolver,
                "",
                "53",
            )
        )
        resolver.nameservers = [host.strip("[]")]
        resolver.port = int(port)
    resolver.lifetime = settings.dns_timeout_seconds
    resolver.timeout = settings.dns_timeout_seconds
    return resolver


async def txt_values(settings: Settings, name: str) -> list[str]:
    """Every TXT value at ``name`` (each record's strings joined); [] when there is none."""
    try:
        answer = await resolver_for(settings).resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise Unavailable(f"the DNS resolver did not answer for {name}: {exc}") from exc
    return sorted(b"".join(record.strings).decode(errors="replace") for record in answer)
