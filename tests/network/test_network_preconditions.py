"""ETag and If-Match on routes and domains: GET gives the version as ETag, a stale If-Match is 412
and changes nothing, a matching one applies, and no If-Match still applies."""

from __future__ import annotations

import msgspec
import pytest

from ctrlplane.settings import Settings
from tests.api.test_instances import tenant_token
from tests.conftest import Api
from tests.network.processes import ChallTestSrv, challtestsrv  # noqa: F401 - fixture
from tests.network.test_domains import domain_for
from tests.network.test_routes import routes_url


@pytest.fixture
def settings(settings: Settings, challtestsrv: ChallTestSrv) -> Settings:
    return msgspec.structs.replace(settings, dns_resolver=challtestsrv.dns_address, dns_timeout_seconds=3)


async def test_route_patch_and_delete_honour_if_match(api: Api) -> None:
    _, token = await tenant_token(api)
    _, url = await routes_url(api, token)
    created = (await api.client.post(url, json={"path": "/api", "port": 8080}, headers=token)).json()
    path = f"/v1/routes/{created['id']}"
    read = await api.client.get(path, headers=token)
    assert read.status_code == 200 and read.json() == created
    etag = read.headers["etag"]
    assert etag == '"1"' == f'"{created["version"]}"'

    first = await api.client.patch(path, json={"weight": 40}, headers={**token, "If-Match": etag})
    assert first.status_code == 200, first.text
    assert first.headers["etag"] == '"2"'
    second = await api.client.patch(path, json={"weight": 60}, headers={**token, "If-Match": etag})
    assert second.status_code == 412 and second.json()["details"]["etag"] == '"2"'
    stale_delete = await api.client.delete(path, headers={**token, "If-Match": etag})
    assert stale_delete.status_code == 412
    assert (await api.client.get(path, headers=token)).json()["weight"] == 40

    same = await api.client.patch(path, json={"weight": 40}, headers=token)
    assert same.status_code == 200 and same.headers["etag"] == '"2"', "a PATCH that changes nothing is no new version"
    assert (await api.client.delete(path, headers={**token, "If-Match": '"2"'})).status_code == 204
    assert (await api.client.get(path, headers=token)).status_code == 404


async def test_other_tenant_gets_404_for_a_route_whatever_if_match_says(api: Api) -> None:
    _, token = await tenant_token(api)
    _, url = await routes_url(api, token)
    created = (await api.client.post(url, json={"path": "/", "port": 8080}, headers=token)).json()
    _, other = await tenant_token(api, slug="globex")
    assert (await api.client.get(f"/v1/routes/{created['id']}", headers=other)).status_code == 404
    refused = await api.client.patch(
        f"/v1/routes/{created['id']}", json={"weight": 1}, headers={**other, "If-Match": '"1"'}
    )
    assert refused.status_code == 404


async def test_domain_verify_certificate_and_delete_honour_if_match(api: Api, challtestsrv: ChallTestSrv) -> None:
    _, token = await tenant_token(api)
    domain = await domain_for(api, token)
    path = f"/v1/domains/{domain['id']}"
    read = await api.client.get(path, headers=token)
    etag = read.headers["etag"]
    assert etag == '"1"' == f'"{read.json()["version"]}"'
    challtestsrv.set_txt(domain["verification"]["name"], domain["verification"]["value"])

    stale = await api.client.post(f"{path}/verify", headers={**token, "If-Match": '"7"'})
    assert stale.status_code == 412, stale.text
    assert (await api.client.get(path, headers=token)).json()["status"] == "pending"
    verified = await api.client.post(f"{path}/verify", headers={**token, "If-Match": etag})
    assert verified.status_code == 200, verified.text
    assert verified.json()["status"] == "verified" and verified.headers["etag"] == '"2"'
    again = await api.client.post(f"{path}/verify", headers=token)
    assert again.status_code == 200 and again.headers["etag"] == '"2"', "verifying a verified domain changes nothing"

    refused_cert = await api.client.post(f"{path}/cert", headers={**token, "If-Match": etag})
    assert refused_cert.status_code == 412
    assert (await api.client.get(path, headers=token)).json()["certificate"] is None
    requested = await api.client.post(f"{path}/cert", headers={**token, "If-Match": '"2"'})
    assert requested.status_code == 202, requested.text
    assert requested.headers["etag"] == '"3"'

    refused_delete = await api.client.delete(path, headers={**token, "If-Match": '"2"'})
    assert refused_delete.status_code == 412
    assert (await api.client.get(path, headers=token)).status_code == 200
    assert (await api.client.delete(path, headers={**token, "If-Match": '"3"'})).status_code == 204
    assert (await api.client.get(path, headers=token)).status_code == 404
