from __future__ import annotations

from tests.api.test_instances import WEB, create, tenant_token
from tests.conftest import Api


async def test_create_cuts_release_one_with_the_whole_configuration(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    assert instance["current_release_id"].startswith("rel_")
    release = (await api.client.get(f"/v1/releases/{instance['current_release_id']}", headers=token)).json()
    assert release["version"] == 1
    assert release["reason"] == "create"
    assert release["image"] == WEB["image"]
    assert release["env"] == WEB["env"]
    assert release["resources"] == WEB["resources"]
    assert release["replicas"] == 1
    assert release["created_by"] == "alice"


async def test_changing_env_cuts_the_next_release_and_keeps_the_old_one(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    path = f"/v1/instances/{instance['id']}"
    updated = (await api.client.patch(path, json={"env": {"NODE_ENV": "staging"}}, headers=token)).json()
    assert updated["current_release_id"] != instance["current_release_id"]
    releases = (await api.client.get(f"{path}/releases", headers=token)).json()
    assert [(r["version"], r["env"]["NODE_ENV"]) for r in releases["items"]] == [(2, "staging"), (1, "production")]
    renamed = (await api.client.patch(path, json={"name": "renamed"}, headers=token)).json()
    assert renamed["current_release_id"] == updated["current_release_id"]


async def test_other_tenant_gets_404_for_releases(api: Api) -> None:
    _, a_token = await tenant_token(api, "a")
    _, b_token = await tenant_token(api, "b")
    instance = await create(api, a_token)
    assert (await api.client.get(f"/v1/releases/{instance['current_release_id']}", headers=b_token)).status_code == 404
    assert (await api.client.get(f"/v1/instances/{instance['id']}/releases", headers=b_token)).status_code == 404
