"""Templates through the HTTP API: typed parameters, versions, system templates, scoping."""

from __future__ import annotations

from sqlalchemy import func, select

from ctrlplane.db import Database
from ctrlplane.environments.models import Environment
from ctrlplane.instances.models import Instance
from tests.api.environments.helpers import SPEC, TEMPLATE, template, tenant, up
from tests.conftest import Api


async def _count(db: Database, model: type) -> int:
    async with db.read() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_template_round_trips_and_edits_make_new_versions(api: Api) -> None:
    _, token = await tenant(api)
    created = await template(api, token)
    assert created["version"] == 1
    assert created["system"] is False
    assert created["max_ttl"] == "7d"
    assert [p["name"] for p in created["parameters"]] == ["version", "greeting", "debug", "workers", "flavour"]
    changed = await api.client.patch(
        f"/v1/templates/{created['id']}", json={"description": "previews of pull requests"}, headers=token
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    unchanged = await api.client.patch(
        f"/v1/templates/{created['id']}", json={"description": "previews of pull requests"}, headers=token
    )
    assert unchanged.json()["version"] == 2
    listed = await api.client.get("/v1/templates", headers=token)
    assert [t["id"] for t in listed.json()["items"]] == [created["id"]]


async def test_environment_keeps_the_template_version_it_was_made_from(api: Api) -> None:
    _, token = await tenant(api)
    created = await template(api, token)
    first = await up(api, token, key="pr-1")
    assert first["template_version"] == 1
    spec = {**SPEC, "env": {**SPEC["env"], "EXTRA": "1"}}
    await api.client.patch(f"/v1/templates/{created['id']}", json={"spec": spec}, headers=token)
    again = await up(api, token, key="pr-1", status=200)
    assert again["id"] == first["id"]
    assert again["template_version"] == 1
    second = await up(api, token, key="pr-2")
    assert second["template_version"] == 2
    instance = (await api.client.get(f"/v1/instances/{second['instance_id']}", headers=token)).json()
    assert instance["env"]["EXTRA"] == "1"
    old = (await api.client.get(f"/v1/instances/{first['instance_id']}", headers=token)).json()
    assert "EXTRA" not in old["env"]


async def test_invalid_declarations_are_named_and_nothing_is_written(api: Api, db: Database) -> None:
    _, token = await tenant(api)
    response = await api.client.post(
        "/v1/templates",
        json={
            **TEMPLATE,
            "spec": {**SPEC, "env": {**SPEC["env"], "X": "{{undeclared}}"}},
            "parameters": [
                *TEMPLATE["parameters"][:3],
                {"name": "workers", "type": "integer", "default": "many"},
                {"name": "flavour", "type": "enum"},
            ],
        },
        headers=token,
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_input"
    assert set(body["details"]["parameters"]) == {"workers", "flavour", "undeclared"}
    from ctrlplane.templates.models import Template

    assert await _count(db, Template) == 0


async def test_missing_unknown_and_mistyped_parameters_are_all_named_before_anything_is_written(
    api: Api, db: Database
) -> None:
    _, token = await tenant(api)
    await template(api, token)
    response = await api.client.post(
        "/v1/environments",
        json={
            "key": "pr-1",
            "template": "preview",
            "parameters": {"version": "latest", "debug": "maybe", "workers": "two", "flavour": "mint", "colour": "red"},
        },
        headers=token,
    )
    assert response.status_code == 400, response.text
    problems = response.json()["details"]["parameters"]
    assert set(problems) == {"greeting", "version", "debug", "workers", "flavour", "colour"}
    assert problems["greeting"] == "required"
    assert problems["colour"] == "unknown parameter"
    assert "request_id" in response.json()
    assert await _count(db, Environment) == 0
    assert await _count(db, Instance) == 0


async def test_parameters_fill_the_image_env_and_labels(api: Api) -> None:
    _, token = await tenant(api)
    await template(api, token)
    environment = await up(
        api, token, parameters={"greeting": "hello", "version": "2.1", "debug": True, "workers": "4"}
    )
    assert environment["parameters"] == {
        "greeting": "hello",
        "version": "2.1",
        "debug": True,
        "workers": 4,
        "flavour": "vanilla",
    }
    instance = (await api.client.get(f"/v1/instances/{environment['instance_id']}", headers=token)).json()
    assert instance["image"] == "ctrlplane-test/app:2.1"
    assert instance["env"] == {"GREETING": "hello", "DEBUG": "true", "WORKERS": "4"}
    assert instance["labels"] == {"flavour": "vanilla"}
    assert instance["hostnames"] == [environment["hostname"]]
    assert instance["url"] == environment["url"]
    listed = (await api.client.get("/v1/instances", headers=token)).json()["items"]
    assert [i["url"] for i in listed] == [environment["url"]]


async def test_system_template_is_visible_to_every_tenant_but_changed_by_admins_only(api: Api) -> None:
    published = await api.client.post("/v1/templates", json=TEMPLATE, headers=api.admin_headers)
    assert published.status_code == 201, published.text
    assert published.json()["system"] is True
    template_id = published.json()["id"]
    for slug in ("acme", "globex"):
        _, token = await tenant(api, slug)
        seen = await api.client.get(f"/v1/templates/{template_id}", headers=token)
        assert seen.status_code == 200
        environment = await up(api, token)
        assert environment["template_id"] == template_id
        refused = await api.client.patch(f"/v1/templates/{template_id}", json={"description": "x"}, headers=token)
        assert refused.status_code == 403, refused.text
        assert (await api.client.delete(f"/v1/templates/{template_id}", headers=token)).status_code == 403
    changed = await api.client.patch(
        f"/v1/templates/{template_id}", json={"description": "x"}, headers=api.admin_headers
    )
    assert changed.json()["version"] == 2


async def test_other_tenant_gets_404_for_template(api: Api) -> None:
    _, token_a = await tenant(api, "acme")
    _, token_b = await tenant(api, "globex")
    created = await template(api, token_a)
    for method in ("GET", "PATCH", "DELETE"):
        response = await api.client.request(
            method,
            f"/v1/templates/{created['id']}",
            headers=token_b,
            json={"description": "x"} if method == "PATCH" else None,
        )
        assert response.status_code == 404, (method, response.text)
    by_name = await api.client.post(
        "/v1/environments", json={"key": "k", "template": "preview", "parameters": {"greeting": "x"}}, headers=token_b
    )
    assert by_name.status_code == 404, by_name.text
    by_id = await api.client.post(
        "/v1/environments",
        json={"key": "k", "template": created["id"], "parameters": {"greeting": "x"}},
        headers=token_b,
    )
    assert by_id.status_code == 404, by_id.text
    assert (await api.client.get("/v1/templates", headers=token_b)).json()["items"] == []


async def test_deleted_template_makes_no_new_environments_but_existing_ones_stay(api: Api) -> None:
    _, token = await tenant(api)
    created = await template(api, token)
    environment = await up(api, token)
    assert (await api.client.delete(f"/v1/templates/{created['id']}", headers=token)).status_code == 204
    assert (await api.client.get(f"/v1/environments/{environment['id']}", headers=token)).status_code == 200
    again = await api.client.post(
        "/v1/environments", json={"key": "pr-9", "template": "preview", "parameters": {"greeting": "x"}}, headers=token
    )
    assert again.status_code == 404


async def test_duplicate_template_name_is_409(api: Api) -> None:
    _, token = await tenant(api)
    await template(api, token)
    response = await api.client.post("/v1/templates", json=TEMPLATE, headers=token)
    assert response.status_code == 409


async def test_a_templates_release_command_is_its_environments_release_phase(api: Api) -> None:
    _, token = await tenant(api)
    spec = {**SPEC, "release_command": ["sh", "-c", "migrate up"], "release_timeout": 120}
    created = await template(api, token, spec=spec)
    assert created["spec"]["release_command"] == ["sh", "-c", "migrate up"]
    environment = await up(api, token, key="pr-1")
    instance = (await api.client.get(f"/v1/instances/{environment['instance_id']}", headers=token)).json()
    assert instance["release_command"] == ["sh", "-c", "migrate up"]
    assert instance["release_timeout"] == 120
