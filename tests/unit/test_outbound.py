"""The outbound guard: which destinations the control plane fetches from."""

from __future__ import annotations

import ipaddress

import pytest

from ctrlplane.outbound import BlockedDestination, OutboundPolicy

REFUSED = [
    "127.0.0.1",
    "127.9.9.9",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "fd00:ec2::254",  # AWS metadata over IPv6
    "100.100.100.200",  # Alibaba metadata, shared address space
    "fe80::1",
    "0.0.0.0",
    "224.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "240.0.0.1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    assert not OutboundPolicy().permits(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(BlockedDestination, match="CTRLPLANE_OUTBOUND_ALLOW_CIDRS"):
        OutboundPolicy().check(f"https://{host}/jwks.json")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_public_addresses_are_permitted(address: str) -> None:
    assert OutboundPolicy().permits(ipaddress.ip_address(address))


def test_configured_networks_are_permitted_and_only_those() -> None:
    policy = OutboundPolicy(["127.0.0.0/8", "10.20.0.0/16"])
    assert policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert policy.permits(ipaddress.ip_address("10.20.3.4"))
    assert not policy.permits(ipaddress.ip_address("10.21.0.1"))
    assert not policy.permits(ipaddress.ip_address("169.254.169.254"))
    policy.check("http://127.0.0.1:8080/jwks.json")


def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    with pytest.raises(BlockedDestination, match="localhost"):
        OutboundPolicy().check("https://localhost/jwks.json")
    OutboundPolicy(["127.0.0.0/8", "::1/128"]).check("https://localhost/jwks.json")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "https:///nohost", "gopher://x"])
def test_only_http_and_https_urls_with_a_host_are_fetched(url: str) -> None:
    with pytest.raises(BlockedDestination, match="only http and https"):
        OutboundPolicy().check(url)
