"""``read_only_root_fs`` on create and PATCH (issue 16, item 10): shown on the instance, carried to
the provider in the spec, and a change rolls out new containers like an env change. That it holds
inside a real container is ``tests/providers/test_docker.py``'s (and the manifests' tests')."""

from __future__ import annotations

from typing import Any

from ctrlplane.db import Database
from ctrlplane.instances.models import Instance
from ctrlplane.operations.spec import spec_for
from ctrlplane.settings import Settings
from tests.api.test_instances import create, tenant_token
from tests.conftest import Api


async def spec_flag(db: Database, settings: Settings, instance_id: str) -> bool:
    async with db.read() as session:
        instance = await session.get(Instance, instance_id)
    assert instance is not None
    return spec_for(instance, settings=settings).read_only_root_fs


async def test_created_read_only_shows_and_reaches_the_spec_and_defaults_to_writable(
    api: Api, db: Database, settings: Settings
) -> None:
    _, token = await tenant_token(api)
    locked = await create(api, token, name="locked", read_only_root_fs=True)
    plain = await create(api, token, name="plain")
    assert (locked["read_only_root_fs"], plain["read_only_root_fs"]) == (True, False)
    assert await spec_flag(db, settings, locked["id"]) is True
    assert await spec_flag(db, settings, plain["id"]) is False


async def test_patching_read_only_rolls_out_a_new_release_and_a_string_is_refused(
    api: Api, db: Database, settings: Settings
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    path = f"/v1/instances/{instance['id']}"
    refused = await api.client.patch(path, json={"read_only_root_fs": "true"}, headers=token)
    assert refused.status_code == 400 and "read_only_root_fs" in refused.text
    patched = await api.client.patch(path, json={"read_only_root_fs": True}, headers=token)
    assert patched.status_code == 200, patched.text
    body: dict[str, Any] = patched.json()
    assert body["read_only_root_fs"] is True
    assert body["current_release_id"] != instance["current_release_id"], "a change rolls out new containers"
    assert await spec_flag(db, settings, instance["id"]) is True
    same = await api.client.patch(path, json={"read_only_root_fs": True}, headers=token)
    assert same.json()["current_release_id"] == body["current_release_id"]
