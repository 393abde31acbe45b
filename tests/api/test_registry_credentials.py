"""Per-tenant registry credentials (issue 16, item 2): stored sealed like secrets, never returned,
audited, admitted by the registry policy, and handed to the provider for pulls of that registry's
images only (``WorkloadSpec.registry_auth``)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ctrlplane.db import Database
from ctrlplane.instances.models import Instance
from ctrlplane.operations.spec import spec_for
from ctrlplane.secrets.service import for_release
from ctrlplane.settings import Settings
from ctrlplane.web.context import AppServices
from tests.api.test_instances import create, tenant_token
from tests.api.test_secrets import assert_absent, marker, raw_storage
from tests.conftest import Api

PATH = "/v1/registry-credentials"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, registry_allow=("localhost:5000",))


async def put(api: Api, token: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.client.post(PATH, json=body, headers=token)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_set_list_get_delete_show_registry_and_username_never_the_password(api: Api) -> None:
    _, token = await tenant_token(api)
    password = marker()
    first = await put(api, token, registry="GHCR.io", username="robot", password=password)
    assert first["registry"] == "ghcr.io" and first["username"] == "robot"
    again = await put(api, token, registry="ghcr.io", username="robot2", password=marker())
    assert again["id"] == first["id"] and again["username"] == "robot2", "one credential per registry"
    hub = await put(api, token, registry="index.docker.io", username="me", password=marker())
    assert hub["registry"] == "docker.io"
    listed = await api.client.get(PATH, headers=token)
    assert listed.status_code == 200 and listed.json()["total"] == 2
    assert {item["registry"] for item in listed.json()["items"]} == {"ghcr.io", "docker.io"}
    shown = await api.client.get(f"{PATH}/{first['id']}", headers=token)
    assert shown.status_code == 200 and set(shown.json()) == {
        "id",
        "tenant_id",
        "registry",
        "username",
        "created_at",
        "updated_at",
    }
    for response in (listed, shown):
        assert password not in response.text and "password" not in response.text
    assert (await api.client.delete(f"{PATH}/{first['id']}", headers=token)).status_code == 204
    assert (await api.client.get(f"{PATH}/{first['id']}", headers=token)).status_code == 404


async def test_other_tenant_gets_404_for_registry_credential(api: Api) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "umbrella")
    credential = await put(api, token, registry="ghcr.io", username="robot", password=marker())
    assert (await api.client.get(f"{PATH}/{credential['id']}", headers=other)).status_code == 404
    assert (await api.client.delete(f"{PATH}/{credential['id']}", headers=other)).status_code == 404
    assert (await api.client.get(PATH, headers=other)).json()["total"] == 0


@pytest.mark.parametrize(
    ("registry", "code"),
    [
        ("169.254.169.254", "registry_ip_literal"),
        ("10.0.0.5:5000", "registry_ip_literal"),
        ("localhost:5001", "registry_address_refused"),
        ("registry", "invalid_input"),
        ("bad host!", "invalid_input"),
    ],
)
async def test_credentials_for_a_refused_registry_are_400_and_stored_nowhere(
    api: Api, registry: str, code: str
) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post(PATH, json={"registry": registry, "username": "u", "password": "p"}, headers=token)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    assert (await api.client.get(PATH, headers=token)).json()["total"] == 0


async def test_the_allow_listed_registry_is_admitted(api: Api) -> None:
    _, token = await tenant_token(api)
    assert (await put(api, token, registry="localhost:5000", username="u", password="p"))[
        "registry"
    ] == "localhost:5000"


@pytest.mark.dialects("reads each dialect's raw storage")
async def test_the_password_is_in_no_raw_storage_audit_entry_or_log(
    api: Api, db: Database, settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    tenant_id, token = await tenant_token(api)
    password = marker()
    await put(api, token, registry="ghcr.io", username="robot", password=password)
    raw = await raw_storage(db)
    assert b"ghcr.io" in raw or b"ghcr.io".hex().encode() in raw
    assert_absent([password], raw, f"the raw {db.dialect} storage")
    audit = await api.client.get(
        "/v1/admin/audit", params={"tenant_id": tenant_id, "resource": "registry_credential"}, headers=api.admin_headers
    )
    assert audit.status_code == 200, audit.text
    (entry,) = audit.json()["items"]
    assert entry["action"] == "set" and entry["details"]["registry"] == "ghcr.io"
    assert password not in audit.text
    captured = capfd.readouterr()
    assert_absent([password], (captured.out + captured.err).encode(), "the log output")


async def test_a_workers_spec_carries_the_credential_of_its_images_registry_only(
    api: Api, app: Any, db: Database, settings: Settings
) -> None:
    _, token = await tenant_token(api)
    password = marker()
    await put(api, token, registry="ghcr.io", username="robot", password=password)
    private = await create(api, token, name="private", image="ghcr.io/acme/api:1")
    public = await create(api, token, name="public", image="ctrlplane-test/busybox:1")
    services: AppServices = app.state.services
    for created, expected in ((private, ("ghcr.io", "robot", password)), (public, None)):
        async with db.read() as session:
            instance = await session.get(Instance, created["id"])
        assert instance is not None
        secrets = await for_release(services, instance.current_release_id)
        auth = spec_for(instance, settings=settings, secrets=secrets).registry_auth
        assert (auth and (auth.registry, auth.username, auth.password)) == expected
        assert password not in repr(secrets)


async def test_a_tenant_holds_at_most_the_limit_of_credentials_and_replacing_one_is_not_a_new_one(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctrlplane.registry_credentials import service

    monkeypatch.setattr(service, "MAX_CREDENTIALS_PER_TENANT", 2)
    _, token = await tenant_token(api)
    for registry in ("one.example.com", "two.example.com"):
        await put(api, token, registry=registry, username="u", password="p")
    refused = await api.client.post(
        PATH, json={"registry": "three.example.com", "username": "u", "password": "p"}, headers=token
    )
    assert refused.status_code == 409 and refused.json()["details"]["limit"] == 2, refused.text
    await put(api, token, registry="two.example.com", username="u2", password="p2")
    assert (await api.client.get(PATH, headers=token)).json()["total"] == 2
