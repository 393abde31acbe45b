"""The registry admission rule: which image references may be pulled (no engine, a fake resolver)."""

from __future__ import annotations

import ipaddress

import pytest

from ctrlplane.provisioning.errors import PULL_FAILURES, pull_failed
from ctrlplane.registries import RegistryAddressRefused, RegistryIpLiteral, RegistryPolicy, registry_of

DNS = {
    "registry.example.com": ["93.184.216.34"],
    "internal.corp.example": ["10.1.2.3"],
    "metadata.attacker.example": ["169.254.169.254"],
    "mixed.attacker.example": ["93.184.216.34", "127.0.0.1"],
    "self.example": ["93.184.216.99"],
}


def resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError("no such host")
    return DNS[host]


def policy(**options: object) -> RegistryPolicy:
    return RegistryPolicy(resolver=resolver, own_addresses=[ipaddress.ip_address("93.184.216.99")], **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("nginx:1", None),
        ("team/app:2", None),
        ("ctrlplane-test/busybox:1", None),
        ("registry.example.com/app:1", ("registry.example.com", None)),
        ("registry.example.com:5000/app:1", ("registry.example.com", 5000)),
        ("localhost/app", ("localhost", None)),
        ("127.0.0.1:5000/app", ("127.0.0.1", 5000)),
        ("[::1]:5000/app", ("::1", 5000)),
    ],
)
def test_the_registry_is_the_first_component_when_it_looks_like_a_host(
    image: str, registry: tuple[str, int | None] | None
) -> None:
    assert registry_of(image) == registry


@pytest.mark.parametrize("image", ["nginx:1", "team/app:2", "registry.example.com/app:1", "unresolvable.example/app"])
def test_docker_hub_public_and_unresolvable_registries_are_allowed(image: str) -> None:
    policy().check(image)


@pytest.mark.parametrize(
    "image", ["127.0.0.1:5000/app", "169.254.169.254/latest", "10.0.0.5:6379/x", "93.184.216.34/app", "[::1]:5000/a"]
)
def test_ip_literal_registries_are_refused(image: str) -> None:
    with pytest.raises(RegistryIpLiteral) as refused:
        policy().check(image)
    assert refused.value.code == "registry_ip_literal" and refused.value.status == 400


@pytest.mark.parametrize(
    "image",
    [
        "internal.corp.example/app",
        "metadata.attacker.example/app",
        "mixed.attacker.example:443/app",
        "self.example/app",
    ],
)
def test_names_resolving_to_private_metadata_or_own_addresses_are_refused(image: str) -> None:
    with pytest.raises(RegistryAddressRefused) as refused:
        policy().check(image)
    assert refused.value.code == "registry_address_refused"


def test_the_allow_lists_let_an_operator_permit_an_internal_registry() -> None:
    policy(allowed_registries=["internal.corp.example"]).check("internal.corp.example/app")
    policy(allowed_registries=["*.corp.example"]).check("internal.corp.example:5000/app")
    policy(allowed_cidrs=["10.0.0.0/8"]).check("internal.corp.example/app")
    policy(allowed_cidrs=["10.0.0.0/8"]).check("10.0.0.5:5000/app")
    with pytest.raises(RegistryAddressRefused):
        policy(allowed_registries=["other.corp.example"]).check("internal.corp.example/app")


@pytest.mark.parametrize(
    ("engine_text", "kind"),
    [
        ('Get "https://10.0.0.5:6379/v2/": http: server gave HTTP response to HTTPS client', "unreachable"),
        ('Get "https://10.0.0.5:22/v2/": dial tcp 10.0.0.5:22: connect: connection refused', "unreachable"),
        ("Get https://10.0.0.6/v2/: net/http: request canceled (Client.Timeout exceeded)", "unreachable"),
        ("manifest for ghcr.io/nobody/x:1 not found: manifest unknown", "not_found"),
        ("pull access denied for x, repository does not exist or may require 'docker login'", "not_found"),
        ("received unexpected HTTP status: 500 Internal Server Error", "refused"),
    ],
)
def test_pull_failures_are_classified_into_fixed_messages(engine_text: str, kind: str) -> None:
    error = pull_failed("10.0.0.5:6379/x:1", engine_text)
    assert error.details == {"image": "10.0.0.5:6379/x:1", "reason": kind}
    assert error.message == f"image '10.0.0.5:6379/x:1' could not be pulled: {PULL_FAILURES[kind]}"
