"""Environments through the HTTP API (fake provider): get-or-create by key, lifetimes, quotas,
events, audit, scoping. Real-Docker and Caddy behaviour is in test_environments_docker.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import func, select, text

from ctrlplane.app import create_app
from ctrlplane.db import Database
from ctrlplane.environments.models import Environment
from ctrlplane.instances.models import Instance
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from tests.api.environments.helpers import template, tenant, up, wait_env
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider


def moment(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


async def count(db: Database, model: type, *where: Any) -> int:
    async with db.read() as session:
        statement = select(func.count()).select_from(model)
        for clause in where:
            statement = statement.where(clause)
        return int((await session.execute(statement)).scalar_one())


async def test_get_or_create_returns_the_same_environment_twice(api: Api, db: Database) -> None:
    tenant_id, token = await tenant(api)
    await template(api, token)
    first = await up(
        api, token, key="pr-123", ttl="2h", tags=["pr", "team-a"], idle_timeout="15m", on_idle="scale_to_zero"
    )
    assert first["id"].startswith("env_")
    assert first["key"] == "pr-123"
    assert first["state"] == "active"
    assert first["owner"] == "alice"
    assert first["tenant_id"] == tenant_id
    assert first["extends_left"] == 2
    assert first["idle_timeout"] == "15m"
    assert first["on_idle"] == "scale_to_zero"
    assert first["hostname"].endswith(".acme.localhost")
    assert first["hostname"].startswith("pr-123-")
    assert first["url"] == f"http://{first['hostname']}"
    lifetime = moment(first["expires_at"]) - moment(first["created_at"])
    assert timedelta(hours=2) - timedelta(seconds=5) < lifetime <= timedelta(hours=2)
    second = await up(api, token, key="pr-123", status=200, ttl="2h")
    assert second["id"] == first["id"]
    assert second["instance_id"] == first["instance_id"]
    assert await count(db, Environment) == 1
    assert await count(db, Instance) == 1
    listed = (await api.client.get("/v1/environments", params={"key": "pr-123"}, headers=token)).json()
    assert [e["id"] for e in listed["items"]] == [first["id"]]
    assert (await api.client.get("/v1/environments", params={"tag": "team-a"}, headers=token)).json()["items"]
    assert not (await api.client.get("/v1/environments", params={"tag": "nope"}, headers=token)).json()["items"]
    assert not (await api.client.get("/v1/environments", params={"owner": "bob"}, headers=token)).json()["items"]


async def test_mismatched_parameters_are_409_unless_replace(api: Api, db: Database) -> None:
    _, token = await tenant(api)
    await template(api, token)
    first = await up(api, token, key="pr-1")
    conflict = await api.client.post(
        "/v1/environments",
        json={"key": "pr-1", "template": "preview", "parameters": {"greeting": "other"}},
        headers=token,
    )
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["details"]["environment_id"] == first["id"]
    replaced = await up(api, token, key="pr-1", parameters={"greeting": "other"}, replace=True)
    assert replaced["id"] != first["id"]
    old = (await api.client.get(f"/v1/environments/{first['id']}", headers=token)).json()
    assert old["state"] == "terminating"
    assert old["termination_reason"] == "replaced"
    old_instance = (await api.client.get(f"/v1/instances/{first['instance_id']}", headers=token)).json()
    assert old_instance["state"] == "destroying"
    assert await count(db, Environment, Environment.state == "active") == 1


async def _twenty_calls(clients: list[Any], token: dict[str, str]) -> list[Any]:
    body = {"key": "pr-race", "template": "preview", "parameters": {"greeting": "hi"}}
    return await asyncio.gather(
        *(clients[i % len(clients)].post("/v1/environments", json=body, headers=token) for i in range(20))
    )


@pytest.mark.dialects
async def test_twenty_concurrent_calls_with_one_key_make_one_environment(
    api: Api, db: Database, settings: Settings, fake: FakeProvider
) -> None:
    _, token = await tenant(api)
    await template(api, token)
    # a second app instance (its own engine and pool), as another replica would be
    second = create_app(msgspec.structs.replace(settings, background=False), providers=ProviderRegistry([fake]))
    import httpx

    transport = httpx.ASGITransport(app=second, client=("127.0.0.1", 50001))
    async with httpx.AsyncClient(transport=transport, base_url="http://ctrlplane.test") as other:
        responses = await _twenty_calls([api.client, other], token)
        await second.state.services.db.dispose()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await count(db, Environment) == 1
    assert await count(db, Instance) == 1
    async with db.read() as session:
        provisions = (
            await session.execute(text("SELECT count(*) FROM operations WHERE kind = 'provision'"))
        ).scalar_one()
    assert provisions == 1


@pytest.mark.dialects
async def test_the_database_refuses_a_second_active_environment_for_a_key(api: Api, db: Database) -> None:
    _, token = await tenant(api)
    await template(api, token)
    environment = await up(api, token, key="pr-1")
    async with db.write() as session, session.begin():
        row = await session.get(Environment, environment["id"])
        assert row is not None
        clone = Environment(
            **{c.name: getattr(row, c.name) for c in Environment.__table__.columns if c.name != "id"},
            id="env_clone",
        )
        session.add(clone)
        with pytest.raises(Exception, match=r"(?i)unique"):
            await session.flush()


async def test_per_owner_quota_is_403_naming_the_owner_and_released_on_terminate(api: Api) -> None:
    tenant_id, token = await tenant(api)
    await template(api, token, max_environments_per_owner=2)
    await up(api, token, key="a")
    second = await up(api, token, key="b")
    refused = await api.client.post(
        "/v1/environments", json={"key": "c", "template": "preview", "parameters": {"greeting": "x"}}, headers=token
    )
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["code"] == "quota_exceeded"
    assert body["details"]["owner"] == "alice"
    assert body["details"]["limit"] == 2
    assert "alice" in body["message"]
    bob = bearer(api.tokens.tenant(tenant_id, subject="bob"))
    assert (await up(api, bob, key="c"))["owner"] == "bob"
    terminated = await api.client.post(f"/v1/environments/{second['id']}/terminate", json={}, headers=token)
    assert terminated.status_code == 202
    await up(api, token, key="d")


async def _set_tenant_per_owner(api: Api, tenant_id: str, limit: int | None) -> None:
    path = f"/v1/admin/tenants/{tenant_id}/quota"
    limits = (await api.client.get(path, headers=api.admin_headers)).json()["limits"]
    put = await api.client.put(path, json={**limits, "max_environments_per_owner": limit}, headers=api.admin_headers)
    assert put.status_code == 200, put.text
    assert put.json()["limits"]["max_environments_per_owner"] == limit


async def test_tenant_per_owner_quota_is_403_naming_the_owner_and_the_tenants_limit(api: Api) -> None:
    tenant_id, token = await tenant(api)
    await template(api, token)
    await _set_tenant_per_owner(api, tenant_id, 1)
    await up(api, token, key="a")
    refused = await api.client.post(
        "/v1/environments", json={"key": "b", "template": "preview", "parameters": {"greeting": "x"}}, headers=token
    )
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["code"] == "quota_exceeded"
    assert body["details"] == {
        "quota": "max_environments_per_owner",
        "used": 1,
        "limit": 1,
        "requested": 1,
        "owner": "alice",
        "source": "tenant",
    }
    assert "alice" in body["message"] and "tenant" in body["message"]
    bob = bearer(api.tokens.tenant(tenant_id, subject="bob"))
    await up(api, bob, key="b")
    await _set_tenant_per_owner(api, tenant_id, None)
    await up(api, token, key="c")


async def test_the_tighter_of_template_and_tenant_per_owner_limits_applies(api: Api) -> None:
    tenant_id, token = await tenant(api)
    await template(api, token, max_environments_per_owner=1)
    await _set_tenant_per_owner(api, tenant_id, 3)
    await up(api, token, key="a")
    refused = await api.client.post(
        "/v1/environments", json={"key": "b", "template": "preview", "parameters": {"greeting": "x"}}, headers=token
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["details"]["source"] == "template"
    assert refused.json()["details"]["limit"] == 1


@pytest.mark.dialects("the tenant row lock must serialize concurrent quota counts on both databases")
async def test_concurrent_get_or_creates_by_one_owner_never_pass_the_tenant_limit(
    api: Api, db: Database, settings: Settings, fake: FakeProvider
) -> None:
    tenant_id, token = await tenant(api)
    await template(api, token)
    await _set_tenant_per_owner(api, tenant_id, 3)
    second = create_app(msgspec.structs.replace(settings, background=False), providers=ProviderRegistry([fake]))
    import httpx

    transport = httpx.ASGITransport(app=second, client=("127.0.0.1", 50001))
    async with httpx.AsyncClient(transport=transport, base_url="http://ctrlplane.test") as other:
        clients = [api.client, other]
        responses = await asyncio.gather(
            *(
                clients[i % 2].post(
                    "/v1/environments",
                    json={"key": f"k-{i}", "template": "preview", "parameters": {"greeting": "hi"}},
                    headers=token,
                )
                for i in range(10)
            )
        )
        await second.state.services.db.dispose()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 3 + [403] * 7, [r.text for r in responses]
    assert all(r.json()["code"] == "quota_exceeded" for r in responses if r.status_code == 403)
    assert await count(db, Environment, Environment.state == "active", Environment.owner == "alice") == 3
    assert await count(db, Instance) == 3


async def test_extend_adds_time_and_409_extend_limit_when_spent(api: Api) -> None:
    _, token = await tenant(api)
    await template(api, token, max_ttl="3h", max_extends=2)
    environment = await up(api, token, ttl="1h")
    expires = moment(environment["expires_at"])
    extended = await api.client.post(f"/v1/environments/{environment['id']}/extend", json={"by": "30m"}, headers=token)
    assert extended.status_code == 200, extended.text
    assert moment(extended.json()["expires_at"]) - expires == timedelta(minutes=30)
    assert extended.json()["extends_left"] == 1
    capped = await api.client.post(f"/v1/environments/{environment['id']}/extend", json={"by": "5h"}, headers=token)
    assert capped.status_code == 200
    assert moment(capped.json()["expires_at"]) - moment(capped.json()["updated_at"]) <= timedelta(hours=3)
    assert capped.json()["extends_left"] == 0
    spent = await api.client.post(f"/v1/environments/{environment['id']}/extend", json={"by": "1m"}, headers=token)
    assert spent.status_code == 409, spent.text
    assert spent.json()["code"] == "extend_limit"
    assert spent.json()["details"] == {"max_extends": 2, "extends_used": 2}


async def test_max_lifetime_is_never_passed_by_extends(api: Api) -> None:
    _, token = await tenant(api)
    await template(api, token, max_ttl=None, max_extends=None)
    environment = await up(api, token, ttl="1h", max_lifetime="2h")
    limit = moment(environment["max_lifetime_at"])
    assert moment(environment["created_at"]) + timedelta(hours=2) - limit < timedelta(seconds=5)
    for _ in range(3):
        response = await api.client.post(
            f"/v1/environments/{environment['id']}/extend", json={"by": "45m"}, headers=token
        )
        if response.status_code != 200:
            break
        assert moment(response.json()["expires_at"]) <= limit
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "extend_limit"
    final = (await api.client.get(f"/v1/environments/{environment['id']}", headers=token)).json()
    assert moment(final["expires_at"]) == limit


async def test_ttl_over_max_ttl_is_400_and_bad_durations_are_named(api: Api) -> None:
    _, token = await tenant(api)
    await template(api, token, max_ttl="1d")
    for body, field in (({"ttl": "2d"}, "ttl"), ({"ttl": "soon"}, "ttl"), ({"idle_timeout": "0s"}, "idle_timeout")):
        response = await api.client.post(
            "/v1/environments",
            json={"key": "k", "template": "preview", "parameters": {"greeting": "x"}, **body},
            headers=token,
        )
        assert response.status_code == 400, response.text
        assert field in response.json()["details"]
    bad_on_idle = await api.client.post(
        "/v1/environments",
        json={"key": "k", "template": "preview", "parameters": {"greeting": "x"}, "on_idle": "sleep"},
        headers=token,
    )
    assert bad_on_idle.status_code == 400


async def test_other_tenant_gets_404_for_environment_and_key(api: Api) -> None:
    _, token_a = await tenant(api, "acme")
    _, token_b = await tenant(api, "globex")
    await template(api, token_a)
    environment = await up(api, token_a, key="pr-1")
    eid = environment["id"]
    for method, path, body in (
        ("GET", f"/v1/environments/{eid}", None),
        ("DELETE", f"/v1/environments/{eid}", None),
        ("POST", f"/v1/environments/{eid}/extend", {"by": "1h"}),
        ("POST", f"/v1/environments/{eid}/terminate", {"hard": True}),
    ):
        response = await api.client.request(method, path, json=body, headers=token_b)
        assert response.status_code == 404, (method, path, response.text)
    assert (await api.client.get("/v1/environments", params={"key": "pr-1"}, headers=token_b)).json()["items"] == []
    await template(api, token_b)
    theirs = await up(api, token_b, key="pr-1")
    assert theirs["id"] != eid
    assert (await api.client.get(f"/v1/environments/{eid}", headers=token_a)).json()["state"] == "active"


async def test_terminate_soft_and_hard(api: Api, live: Api, fake: FakeProvider) -> None:
    _, token = await tenant(live)
    await template(live, token)
    soft = await up(live, token, key="soft")
    hard = await up(live, token, key="hard")
    for environment in (soft, hard):
        await wait_env(live, environment["id"], token, lambda e: e["instance_state"] == "running")
    response = await live.client.post(f"/v1/environments/{hard['id']}/terminate", json={"hard": True}, headers=token)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "terminating"
    assert response.json()["url"] is None
    response = await live.client.delete(f"/v1/environments/{soft['id']}", headers=token)
    assert response.status_code == 202
    for environment in (soft, hard):
        done = await wait_env(live, environment["id"], token, lambda e: e["state"] == "terminated")
        assert done["instance_state"] == "destroyed"
        assert done["terminated_at"] is not None
    assert ("kill", hard["instance_id"]) in fake.calls
    assert ("kill", soft["instance_id"]) not in fake.calls
    again = await live.client.post(f"/v1/environments/{soft['id']}/terminate", json={}, headers=token)
    assert again.status_code == 409


async def test_ttl_expiry_terminates_and_frees_quota_and_key(live: Api, db: Database) -> None:
    _, token = await tenant(live)
    await template(live, token, max_environments_per_owner=1)
    environment = await up(live, token, key="pr-1", ttl="1s")
    expired = await wait_env(live, environment["id"], token, lambda e: e["state"] == "terminated", timeout=20)
    assert expired["termination_reason"] == "expired"
    assert expired["instance_state"] == "destroyed"
    events = (await live.client.get("/v1/events", params={"limit": 100}, headers=token)).json()["items"]
    mine = [e["type"] for e in events if e["data"].get("environment_id") == environment["id"]]
    assert mine == ["environment.created", "environment.expired", "environment.terminated"]
    again = await up(live, token, key="pr-1")
    assert again["id"] != environment["id"]
    audit = (
        await live.client.get("/v1/admin/audit", params={"resource": "environment"}, headers=live.admin_headers)
    ).json()["items"]
    actions = {(e["action"], e["actor_kind"]) for e in audit if e["resource_id"] == environment["id"]}
    assert ("create", "user") in actions
    assert ("expire", "system") in actions


async def test_expiry_while_the_control_plane_was_down_is_done_within_an_interval_of_its_return(
    settings: Settings, db: Database, fake: FakeProvider, api: Api
) -> None:
    _, token = await tenant(api)
    await template(api, token)
    environment = await up(api, token, key="pr-1", ttl="1h")
    # its time passed while no control plane ran (the ASGI client runs no background at all)
    async with db.write() as session, session.begin():
        row = await session.get(Environment, environment["id"])
        assert row is not None
        row.expires_at = row.created_at - timedelta(minutes=1)
    restarted = create_app(settings, providers=ProviderRegistry([fake]), db=db)
    async with restarted.lifespan():
        seen = await wait_env(api, environment["id"], token, lambda e: e["state"] == "terminated", timeout=10)
    assert seen["termination_reason"] == "expired"
    assert ("deprovision", environment["instance_id"]) in fake.calls


async def test_every_template_and_environment_change_is_audited(api: Api) -> None:
    _, token = await tenant(api)
    created = await template(api, token)
    await api.client.patch(f"/v1/templates/{created['id']}", json={"description": "d"}, headers=token)
    environment = await up(api, token, ttl="1h")
    await up(api, token, status=200)
    await api.client.post(f"/v1/environments/{environment['id']}/extend", json={"by": "1h"}, headers=token)
    await api.client.post(f"/v1/environments/{environment['id']}/terminate", json={"hard": True}, headers=token)
    await api.client.delete(f"/v1/templates/{created['id']}", headers=token)
    entries = (await api.client.get("/v1/admin/audit", params={"limit": 100}, headers=api.admin_headers)).json()[
        "items"
    ]
    seen = {(e["resource"], e["action"], e["resource_id"], e["outcome"]) for e in entries}
    for resource, action, resource_id in (
        ("template", "create", created["id"]),
        ("template", "update", created["id"]),
        ("template", "delete", created["id"]),
        ("environment", "create", environment["id"]),
        ("environment", "extend", environment["id"]),
        ("environment", "terminate", environment["id"]),
    ):
        assert any(s[:3] == (resource, action, resource_id) and s[3] == "success" for s in seen), (resource, action)
    creates = [e for e in entries if e["resource"] == "environment" and e["action"] == "create"]
    assert sorted(e["details"]["outcome"] for e in creates) == ["created", "existing"]


async def test_deleting_the_instance_ends_its_environment_and_frees_the_key(live: Api) -> None:
    _, token = await tenant(live)
    await template(live, token)
    environment = await up(live, token, key="pr-1")
    deleted = await live.client.delete(f"/v1/instances/{environment['instance_id']}", headers=token)
    assert deleted.status_code == 202
    ended = await wait_env(live, environment["id"], token, lambda e: e["state"] == "terminated")
    assert ended["termination_reason"] == "instance_deleted"
    again = await up(live, token, key="pr-1")
    assert again["id"] != environment["id"]


FURNISHED_SPEC = {
    "image": "ctrlplane-test/app:1",
    "ports": [{"container_port": 8080}, {"container_port": 9090}],
    "health_checks": [
        {"name": "ready", "type": "http", "target": "http://localhost:8080/{{probe}}", "interval": "10s"},
        {"name": "alive", "type": "tcp", "target": "localhost:9090"},
    ],
    "routes": [
        {"path": "/{{prefix}}", "port": 8080, "strip_prefix": True},
        {"path": "/metrics", "port": 9090},
    ],
}
FURNISHED_PARAMETERS = [
    {"name": "probe", "type": "string", "default": "healthz", "pattern": "[a-z]+"},
    {"name": "prefix", "type": "string", "required": True},
]


async def test_environments_get_the_templates_health_checks_and_routes_with_parameters_in_place(api: Api) -> None:
    _, token = await tenant(api)
    made = await template(api, token, spec=FURNISHED_SPEC, parameters=FURNISHED_PARAMETERS)
    assert [c["target"] for c in made["spec"]["health_checks"]] == ["http://localhost:8080/{{probe}}", "localhost:9090"]
    environment = await up(api, token, key="pr-7", parameters={"prefix": "pr-7", "probe": "ready"})
    instance_id = environment["instance_id"]
    checks = (await api.client.get(f"/v1/instances/{instance_id}/health/checks", headers=token)).json()["items"]
    assert {(c["name"], c["type"], c["target"]) for c in checks} == {
        ("ready", "http", "http://localhost:8080/ready"),
        ("alive", "tcp", "localhost:9090"),
    }
    assert {c["interval"] for c in checks if c["name"] == "ready"} == {"10s"}
    routes = (await api.client.get(f"/v1/instances/{instance_id}/routes", headers=token)).json()["items"]
    assert {(r["path"], r["port"], r["strip_prefix"]) for r in routes} == {
        ("/pr-7", 8080, True),
        ("/metrics", 9090, False),
    }
    other = await up(api, token, key="pr-8", parameters={"prefix": "pr-8"})
    other_checks = (await api.client.get(f"/v1/instances/{other['instance_id']}/health/checks", headers=token)).json()[
        "items"
    ]
    assert "http://localhost:8080/healthz" in {c["target"] for c in other_checks}
    entries = (
        await api.client.get(
            "/v1/admin/audit", params={"resource": "environment", "limit": 100}, headers=api.admin_headers
        )
    ).json()["items"]
    created = next(e for e in entries if e["resource_id"] == environment["id"] and e["action"] == "create")
    assert len(created["details"]["health_checks"]) == 2
    assert len(created["details"]["routes"]) == 2


async def test_a_template_whose_checks_or_routes_cannot_work_is_400_and_a_bad_value_writes_nothing(
    api: Api, db: Database
) -> None:
    _, token = await tenant(api)
    for spec, named in (
        ({**FURNISHED_SPEC, "routes": [{"path": "/", "port": 7000}]}, "port 7000"),
        ({**FURNISHED_SPEC, "health_checks": [{"name": "x", "type": "tcp", "target": "localhost:7000"}]}, "7000"),
        ({**FURNISHED_SPEC, "health_checks": [{"name": "x", "type": "http", "target": "http://e.com/"}]}, "host"),
        ({**FURNISHED_SPEC, "routes": [{"path": "/{{nope}}", "port": 8080}]}, "nope"),
        ({**FURNISHED_SPEC, "routes": [{"path": "no-slash", "port": 8080}]}, "path"),
    ):
        refused = await api.client.post(
            "/v1/templates",
            json={"name": "preview", "spec": spec, "parameters": FURNISHED_PARAMETERS},
            headers=token,
        )
        assert refused.status_code == 400, (spec, refused.text)
        assert named in refused.text, (named, refused.text)
    await template(api, token, spec=FURNISHED_SPEC, parameters=FURNISHED_PARAMETERS)
    refused = await api.client.post(
        "/v1/environments",
        json={"key": "pr-1", "template": "preview", "parameters": {"prefix": "a//b"}},
        headers=token,
    )
    assert refused.status_code == 400, refused.text
    assert await count(db, Environment) == 0
    assert await count(db, Instance) == 0
