"""Domains through the API: claiming a hostname (unique across tenants), DNS verification against a
real DNS server (pebble-challtestsrv), tenant isolation, quotas, deletion."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ctrlplane.settings import Settings
from tests.api.test_instances import create, tenant_token
from tests.conftest import Api
from tests.network.processes import ChallTestSrv, challtestsrv  # noqa: F401 - fixture

WEB = {"name": "web", "image": "ctrlplane-test/busybox:1", "ports": [{"container_port": 8080}]}


@pytest.fixture
def settings(settings: Settings, challtestsrv: ChallTestSrv) -> Settings:
    return msgspec.structs.replace(settings, dns_resolver=challtestsrv.dns_address, dns_timeout_seconds=3)


async def domain_for(api: Api, token: dict[str, str], hostname: str = "app.example.com") -> dict[str, Any]:
    instance = await create(api, token, **WEB)
    response = await api.client.post(
        f"/v1/instances/{instance['id']}/domains", json={"hostname": hostname}, headers=token
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_a_new_domain_is_pending_with_its_txt_challenge(api: Api) -> None:
    _, token = await tenant_token(api)
    domain = await domain_for(api, token, "App.Example.COM.")
    assert domain["hostname"] == "app.example.com"
    assert domain["status"] == "pending"
    assert domain["id"].startswith("dom_")
    verification = domain["verification"]
    assert verification["type"] == "TXT"
    assert verification["name"] == "_ctrlplane-challenge.app.example.com"
    assert len(verification["value"]) > 20
    assert domain["certificate"] is None
    listed = (await api.client.get(f"/v1/instances/{domain['instance_id']}/domains", headers=token)).json()
    assert [d["id"] for d in listed["items"]] == [domain["id"]]


async def test_verify_fails_until_the_txt_record_exists_then_succeeds(api: Api, challtestsrv: ChallTestSrv) -> None:
    _, token = await tenant_token(api)
    domain = await domain_for(api, token)
    name, value = domain["verification"]["name"], domain["verification"]["value"]
    missing = await api.client.post(f"/v1/domains/{domain['id']}/verify", headers=token)
    assert missing.status_code == 409, missing.text
    assert missing.json()["details"]["found"] == []
    assert "no TXT record" in missing.json()["message"]
    challtestsrv.set_txt(name, "something-else")
    wrong = await api.client.post(f"/v1/domains/{domain['id']}/verify", headers=token)
    assert wrong.status_code == 409
    assert wrong.json()["details"]["found"] == ["something-else"]
    assert wrong.json()["details"]["expected"] == value
    assert (await api.client.get(f"/v1/domains/{domain['id']}", headers=token)).json()["status"] == "pending"
    challtestsrv.set_txt(name, value)
    verified = await api.client.post(f"/v1/domains/{domain['id']}/verify", headers=token)
    assert verified.status_code == 200, verified.text
    assert verified.json()["status"] == "verified" and verified.json()["verified_at"] is not None
    challtestsrv.clear_txt(name)
    again = await api.client.post(f"/v1/domains/{domain['id']}/verify", headers=token)
    assert again.status_code == 200 and again.json()["status"] == "verified"


async def test_a_certificate_needs_a_verified_domain(api: Api) -> None:
    _, token = await tenant_token(api)
    domain = await domain_for(api, token)
    response = await api.client.post(f"/v1/domains/{domain['id']}/cert", headers=token)
    assert response.status_code == 409 and response.json()["code"] == "invalid_state"
    assert "verify it" in response.json()["message"]


@pytest.mark.parametrize(
    "hostname",
    [
        "localhost",
        "no_underscores.example.com",
        "-bad.example.com",
        "a..b.com",
        "1.2.3.4",
        "x" * 64 + ".com",
        "web.acme.localhost",
    ],
)
async def test_a_hostname_that_is_not_a_usable_fqdn_is_400(api: Api, hostname: str) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token, **WEB)
    response = await api.client.post(
        f"/v1/instances/{instance['id']}/domains", json={"hostname": hostname}, headers=token
    )
    assert response.status_code == 400, response.text
    assert (await api.client.get(f"/v1/instances/{instance['id']}/domains", headers=token)).json()["total"] == 0


async def test_another_tenant_cannot_claim_the_hostname_or_see_the_domain(api: Api) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    domain = await domain_for(api, token)
    theirs = await create(api, other, **WEB)
    claim = await api.client.post(
        f"/v1/instances/{theirs['id']}/domains", json={"hostname": "APP.example.com"}, headers=other
    )
    assert claim.status_code == 409, claim.text
    assert claim.json()["message"] == "hostname app.example.com is already claimed"
    assert "acme" not in claim.text and domain["tenant_id"] not in claim.text
    for method, path in [
        ("GET", f"/v1/domains/{domain['id']}"),
        ("POST", f"/v1/domains/{domain['id']}/verify"),
        ("POST", f"/v1/domains/{domain['id']}/cert"),
        ("DELETE", f"/v1/domains/{domain['id']}"),
        ("GET", f"/v1/instances/{domain['instance_id']}/domains"),
    ]:
        response = await api.client.request(method, path, headers=other)
        assert response.status_code == 404, f"{method} {path}: {response.text}"
    assert (await api.client.get(f"/v1/instances/{theirs['id']}/domains", headers=other)).json()["total"] == 0
    assert (await api.client.get(f"/v1/domains/{domain['id']}", headers=token)).status_code == 200


async def test_deleting_a_domain_frees_its_hostname(api: Api) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    domain = await domain_for(api, token)
    assert (await api.client.delete(f"/v1/domains/{domain['id']}", headers=token)).status_code == 204
    assert (await api.client.get(f"/v1/domains/{domain['id']}", headers=token)).status_code == 404
    theirs = await create(api, other, **WEB)
    claim = await api.client.post(
        f"/v1/instances/{theirs['id']}/domains", json={"hostname": "app.example.com"}, headers=other
    )
    assert claim.status_code == 201, claim.text


async def test_max_domains_quota_is_enforced(api: Api) -> None:
    _, token = await tenant_token(api, plan="free")
    instance = await create(api, token, **WEB)
    url = f"/v1/instances/{instance['id']}/domains"
    for name in ("a.example.com", "b.example.com"):
        assert (await api.client.post(url, json={"hostname": name}, headers=token)).status_code == 201
    third = await api.client.post(url, json={"hostname": "c.example.com"}, headers=token)
    assert third.status_code == 403 and third.json()["code"] == "quota_exceeded"
    assert third.json()["details"]["quota"] == "max_domains"
    assert (await api.client.get(url, headers=token)).json()["total"] == 2
