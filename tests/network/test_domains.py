"""Domains through the API: claiming a hostname (pending claims of several tenants; one verified),
DNS verification against a real DNS server (pebble-challtestsrv), tenant isolation, quotas,
deletion, expiry of pending claims."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from ctrlplane.db import Database
from ctrlplane.network.models import Domain as DomainRow
from ctrlplane.settings import Settings
from ctrlplane.timeutil import utc_now
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


async def test_another_tenant_cannot_see_the_domain_and_a_pending_claim_blocks_nobody(api: Api) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    domain = await domain_for(api, token)
    theirs = await create(api, other, **WEB)
    claim = await api.client.post(
        f"/v1/instances/{theirs['id']}/domains", json={"hostname": "APP.example.com"}, headers=other
    )
    assert claim.status_code == 201, claim.text
    assert claim.json()["status"] == "pending"
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
    assert [
        d["id"] for d in (await api.client.get(f"/v1/instances/{theirs['id']}/domains", headers=other)).json()["items"]
    ] == [claim.json()["id"]]
    assert (await api.client.get(f"/v1/domains/{domain['id']}", headers=token)).status_code == 200


async def test_the_first_claim_to_verify_wins_and_the_others_are_superseded(
    api: Api, challtestsrv: ChallTestSrv
) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    mine = await domain_for(api, token)
    theirs = await domain_for(api, other)
    assert theirs["status"] == "pending"
    challtestsrv.set_txt(theirs["verification"]["name"], theirs["verification"]["value"])
    won = await api.client.post(f"/v1/domains/{theirs['id']}/verify", headers=other)
    assert won.status_code == 200 and won.json()["status"] == "verified", won.text
    lost = await api.client.get(f"/v1/domains/{mine['id']}", headers=token)
    assert lost.json()["status"] == "superseded"
    challtestsrv.set_txt(mine["verification"]["name"], mine["verification"]["value"])
    refused = await api.client.post(f"/v1/domains/{mine['id']}/verify", headers=token)
    assert refused.status_code == 409
    assert "verified first" in refused.json()["message"]
    again = await api.client.post(
        f"/v1/instances/{mine['instance_id']}/domains", json={"hostname": "app.example.com"}, headers=token
    )
    assert again.status_code == 409 and "already verified" in again.json()["message"]
    challtestsrv.clear_txt(mine["verification"]["name"])


async def test_pending_claims_expire(api: Api, db: Database) -> None:
    _, token = await tenant_token(api)
    domain = await domain_for(api, token)
    async with db.write() as session, session.begin():
        await session.execute(
            update(DomainRow).where(DomainRow.id == domain["id"]).values(created_at=utc_now() - timedelta(days=8))
        )
    expired = await api.client.post(f"/v1/domains/{domain['id']}/verify", headers=token)
    assert expired.status_code == 409
    assert expired.json()["details"]["status"] == "expired"
    renewed = await api.client.post(
        f"/v1/instances/{domain['instance_id']}/domains", json={"hostname": "app.example.com"}, headers=token
    )
    assert renewed.status_code == 201, renewed.text
    assert (await api.client.get(f"/v1/domains/{domain['id']}", headers=token)).status_code == 404


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


@pytest.mark.dialects
async def test_the_database_holds_one_verified_claim_per_hostname_on_both_dialects(api: Api, db: Database) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    first = await domain_for(api, token)
    second = await domain_for(api, other)
    async with db.write() as session, session.begin():
        await session.execute(update(DomainRow).where(DomainRow.id == first["id"]).values(status="verified"))
    with pytest.raises(IntegrityError):
        async with db.write() as session, session.begin():
            await session.execute(update(DomainRow).where(DomainRow.id == second["id"]).values(status="verified"))
