"""Image references naming a registry at an IP literal or a name resolving to loopback, private,
link-local or the control plane's own addresses are refused at admission (issue 16, item 1).
Names resolve through the machine's resolver only (``localhost`` from /etc/hosts); nothing is
connected to."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ctrlplane.settings import Settings
from tests.api.test_instances import WEB, create, tenant_token
from tests.conftest import Api


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, registry_allow=("localhost:5000",))


REFUSED = [
    ("127.0.0.1:5000/app:1", "registry_ip_literal"),
    ("169.254.169.254/latest:1", "registry_ip_literal"),
    ("10.0.0.5:6379/app:1", "registry_ip_literal"),
    ("192.168.1.1/app:1", "registry_ip_literal"),
    ("localhost:5001/app:1", "registry_address_refused"),
    ("localhost/app:1", "registry_address_refused"),
]


@pytest.mark.parametrize(("image", "code"), REFUSED)
async def test_creating_an_instance_from_a_refused_registry_is_400_naming_the_rule(
    api: Api, image: str, code: str
) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post("/v1/instances", json={**WEB, "image": image}, headers=token)
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["details"]["rule"] == code
    assert (await api.client.get("/v1/instances", headers=token)).json()["total"] == 0


@pytest.mark.parametrize(("image", "code"), REFUSED)
async def test_deploying_from_a_refused_registry_is_400_and_keeps_the_image(api: Api, image: str, code: str) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    response = await api.client.post(f"/v1/instances/{instance['id']}/deploy", json={"image": image}, headers=token)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    kept = (await api.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()
    assert kept["image"] == instance["image"]


@pytest.mark.parametrize("image", ["nginx:1", "ctrlplane-test/busybox:1", "team/app:2", "localhost:5000/app:1"])
async def test_docker_hub_references_and_listed_registries_are_admitted(api: Api, image: str) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post("/v1/instances", json={**WEB, "image": image}, headers=token)
    assert response.status_code == 201, response.text
