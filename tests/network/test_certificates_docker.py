"""Domains and certificates end to end: a real container behind a real Caddy, DNS verification
through pebble-challtestsrv, and certificates from Pebble (an ACME CA) validated over HTTP-01
through the router. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from cryptography import x509
from docker import DockerClient
from sqlalchemy import update

from ctrlplane.db import Database
from ctrlplane.network.models import Certificate
from ctrlplane.settings import Settings
from ctrlplane.timeutil import utc_now
from tests.api.test_instances_docker import APP, _remove_what_the_test_made, providers, tenant  # noqa: F401
from tests.conftest import Api
from tests.network.processes import Caddy, ChallTestSrv, Pebble, caddy, challtestsrv  # noqa: F401 - fixtures
from tests.network.test_router_docker import through_router, until_served
from tests.providers.docker_engine import INDEX_BODY, docker_engine  # noqa: F401 - fixture

pytestmark = pytest.mark.docker

HOSTNAME = "app.example.com"


@pytest.fixture
def pebble(tmp_path: Any, caddy: Caddy, challtestsrv: ChallTestSrv) -> Iterator[Pebble]:
    server = Pebble(tmp_path / "pebble", dns_address=challtestsrv.dns_address, http_port=caddy.http_port)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, caddy: Caddy, challtestsrv: ChallTestSrv, pebble: Pebble) -> Settings:
    return msgspec.structs.replace(
        settings,
        providers=("docker",),
        router="caddy",
        router_admin_address=caddy.admin_address,
        router_http_listen=f"127.0.0.1:{caddy.http_port}",
        router_https_listen=f"127.0.0.1:{caddy.https_port}",
        router_sync_interval_seconds=1.0,
        dns_resolver=challtestsrv.dns_address,
        acme_directory_url=pebble.directory_url,
        acme_ca_bundle=str(pebble.ca_bundle),
        acme_email="ops@example.com",
        acme_retry_base_seconds=1.0,
        acme_timeout_seconds=30.0,
        outbound_allow_cidrs=("127.0.0.1/32",),  # Pebble listens on the loopback
    )


async def https_get(caddy: Caddy, hostname: str, root_pem: str, path: str = "/") -> tuple[bytes, x509.Certificate]:
    """GET over TLS to Caddy's HTTPS port on 127.0.0.1 with SNI and Host ``hostname``, trusting only
    Pebble's root; the peer's leaf certificate and the response body."""
    context = ssl.create_default_context(cadata=root_pem)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", caddy.https_port, ssl=context, server_hostname=hostname), 10
    )
    try:
        leaf = x509.load_der_x509_certificate(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body, leaf


async def domain_state(api: Api, domain_id: str, token: dict[str, str]) -> dict[str, Any]:
    response = await api.client.get(f"/v1/domains/{domain_id}", headers=token)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def certificate_becomes(
    api: Api, domain_id: str, token: dict[str, str], predicate: Any, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        domain = await domain_state(api, domain_id, token)
        certificate = domain["certificate"]
        if certificate is not None and predicate(certificate):
            return dict(certificate)
        if time.monotonic() > deadline:
            raise AssertionError(f"certificate never matched; last: {certificate}")
        await asyncio.sleep(0.2)


async def running_instance(live: Api, token: dict[str, str]) -> dict[str, Any]:
    created = await live.client.post("/v1/instances", json={**APP, "name": "web"}, headers=token)
    assert created.status_code == 201, created.text
    return dict(created.json())


async def verified_domain(
    live: Api, token: dict[str, str], instance: dict[str, Any], challtestsrv: ChallTestSrv, caddy: Caddy
) -> dict[str, Any]:
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/domains", json={"hostname": HOSTNAME}, headers=token
    )
    assert response.status_code == 201, response.text
    domain = response.json()
    early = await live.client.post(f"/v1/domains/{domain['id']}/verify", headers=token)
    assert early.status_code == 409, early.text
    assert early.json()["details"]["found"] == []
    await until_served(caddy, "web.acme.localhost", INDEX_BODY)
    pending = await through_router(caddy, HOSTNAME)
    assert pending.status_code == 404, "a pending domain must not route traffic"
    challtestsrv.set_txt(domain["verification"]["name"], domain["verification"]["value"])
    verified = await live.client.post(f"/v1/domains/{domain['id']}/verify", headers=token)
    assert verified.status_code == 200, verified.text
    assert verified.json()["status"] == "verified"
    await until_served(caddy, HOSTNAME, INDEX_BODY)
    return dict(verified.json())


async def test_verify_issue_serve_https_renew_and_delete(
    live: Api, db: Database, caddy: Caddy, challtestsrv: ChallTestSrv, pebble: Pebble, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token)
    domain = await verified_domain(live, token, instance, challtestsrv, caddy)

    requested = await live.client.post(f"/v1/domains/{domain['id']}/cert", headers=token)
    assert requested.status_code == 202, requested.text
    assert requested.json()["status"] == "pending" and requested.json()["domain_id"] == domain["id"]
    certificate = await certificate_becomes(live, domain["id"], token, lambda c: c["status"] == "issued")
    assert certificate["id"].startswith("cert_")
    assert "Pebble" in certificate["issuer"], certificate
    assert certificate["serial"] and certificate["not_before"] and certificate["not_after"]
    assert certificate["error"] is None

    root = pebble.root_pem()
    body, leaf = None, None
    for _ in range(50):
        try:
            body, leaf = await https_get(caddy, HOSTNAME, root)
            break
        except (ssl.SSLError, ConnectionError, AssertionError):
            await asyncio.sleep(0.2)
    assert body == INDEX_BODY, "HTTPS through Caddy did not reach the container"
    assert leaf is not None and format(leaf.serial_number, "x") == certificate["serial"]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == [HOSTNAME]
    with pytest.raises(ssl.SSLCertVerificationError):
        await https_get(caddy, HOSTNAME, _unrelated_root())
    async with db.read() as session:
        stored = await session.get(Certificate, certificate["id"])
    assert stored is not None and stored.key_sealed is not None
    assert "PRIVATE KEY" not in stored.key_sealed, "the private key must be stored sealed"

    async with db.write() as session, session.begin():
        await session.execute(
            update(Certificate)
            .where(Certificate.id == certificate["id"])
            .values(not_after=utc_now() + timedelta(days=10))
        )
    renewed = await certificate_becomes(
        live, domain["id"], token, lambda c: c["status"] == "issued" and c["serial"] != certificate["serial"]
    )
    assert renewed["id"] == certificate["id"]
    for _ in range(50):
        _, leaf = await https_get(caddy, HOSTNAME, root)
        if format(leaf.serial_number, "x") == renewed["serial"]:
            break
        await asyncio.sleep(0.2)
    assert format(leaf.serial_number, "x") == renewed["serial"]

    assert (await live.client.delete(f"/v1/domains/{domain['id']}", headers=token)).status_code == 204
    for _ in range(100):
        if (await through_router(caddy, HOSTNAME)).status_code == 404:
            break
        await asyncio.sleep(0.1)
    assert (await through_router(caddy, HOSTNAME)).status_code == 404, "a deleted domain still routes"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await https_get(caddy, HOSTNAME, root)


async def test_a_failed_order_reports_the_cas_reason_and_is_retried(
    live: Api, caddy: Caddy, challtestsrv: ChallTestSrv, pebble: Pebble, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token)
    domain = await verified_domain(live, token, instance, challtestsrv, caddy)
    challtestsrv.set_a(HOSTNAME, "127.0.0.2")
    requested = await live.client.post(f"/v1/domains/{domain['id']}/cert", headers=token)
    assert requested.status_code == 202
    failed = await certificate_becomes(live, domain["id"], token, lambda c: c["status"] == "failed")
    assert "127.0.0.2" in failed["error"] or "refused" in failed["error"], failed["error"]
    assert failed["error"].startswith("the CA could not validate the challenge")
    assert failed["next_attempt_at"] is not None
    challtestsrv.clear_a(HOSTNAME)
    issued = await certificate_becomes(live, domain["id"], token, lambda c: c["status"] == "issued")
    assert issued["error"] is None and issued["attempts"] == 0
    events = (
        await live.client.get(f"/v1/instances/{instance['id']}/events", params={"limit": 100}, headers=token)
    ).json()["items"]
    types = [e["type"] for e in events]
    assert {"domain.verified", "certificate.failed", "certificate.issued"} <= set(types), types


async def test_another_tenant_cannot_claim_a_verified_hostname(
    live: Api, caddy: Caddy, challtestsrv: ChallTestSrv, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    other = await tenant(live, "globex")
    instance = await running_instance(live, token)
    domain = await verified_domain(live, token, instance, challtestsrv, caddy)
    theirs = await live.client.post("/v1/instances", json={**APP, "name": "web"}, headers=other)
    claim = await live.client.post(
        f"/v1/instances/{theirs.json()['id']}/domains", json={"hostname": HOSTNAME}, headers=other
    )
    assert claim.status_code == 409
    assert (await live.client.get(f"/v1/domains/{domain['id']}", headers=other)).status_code == 404
    assert (await live.client.post(f"/v1/domains/{domain['id']}/cert", headers=other)).status_code == 404


def _unrelated_root() -> str:
    import tempfile
    from pathlib import Path

    from tests.network.processes import _test_ca

    with tempfile.TemporaryDirectory() as directory:
        ca, _, _ = _test_ca(Path(directory))
        return ca.read_text()
