"""Arranging templates and environments through the HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import Api, bearer
from tests.waiting import eventually

SPEC = {
    "image": "ctrlplane-test/app:{{version}}",
    "ports": [{"container_port": 8080}],
    "resources": {"cpu_millis": 100, "memory_mb": 64},
    "env": {"GREETING": "{{greeting}}", "DEBUG": "{{debug}}", "WORKERS": "{{workers}}"},
    "labels": {"flavour": "{{flavour}}"},
}
PARAMETERS = [
    {"name": "version", "type": "string", "default": "1", "pattern": "[0-9]+(\\.[0-9]+)*"},
    {"name": "greeting", "type": "string", "required": True},
    {"name": "debug", "type": "boolean", "default": False},
    {"name": "workers", "type": "integer", "default": 2},
    {"name": "flavour", "type": "enum", "values": ["vanilla", "chocolate"], "default": "vanilla"},
]
TEMPLATE = {"name": "preview", "spec": SPEC, "parameters": PARAMETERS, "max_ttl": "7d", "max_extends": 2}


async def tenant(api: Api, slug: str = "acme", subject: str = "alice") -> tuple[str, dict[str, str]]:
    created = await api.create_tenant(slug, plan="pro")
    return created["id"], bearer(api.tokens.tenant(created["id"], subject=subject))


async def template(api: Api, token: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = await api.client.post("/v1/templates", json={**TEMPLATE, **overrides}, headers=token)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def up(api: Api, token: dict[str, str], key: str = "pr-1", status: int = 201, **overrides: Any) -> dict[str, Any]:
    body = {"key": key, "template": "preview", "parameters": {"greeting": "hi"}, **overrides}
    response = await api.client.post("/v1/environments", json=body, headers=token)
    assert response.status_code == status, response.text
    return dict(response.json())


async def wait_env(
    api: Api,
    environment_id: str,
    token: dict[str, str],
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 15,
) -> dict[str, Any]:
    seen: list[dict[str, Any]] = [{}]

    async def matched() -> dict[str, Any] | None:
        seen[0] = dict((await api.client.get(f"/v1/environments/{environment_id}", headers=token)).json())
        return seen[0] if predicate(seen[0]) else None

    return await eventually(matched, lambda: f"environment never matched; last seen: {seen[0]}", timeout=timeout)


async def ready_members(api: Api, token: dict[str, str], count: int, timeout: float = 20) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    async def ready() -> list[dict[str, Any]] | None:
        seen[:] = (await api.client.get("/v1/environments", params={"state": "pooled"}, headers=token)).json()["items"]
        running = [e for e in seen if e["instance_state"] == "running"]
        return running if len(running) >= count else None

    return await eventually(ready, lambda: f"pool never had {count} ready members: {seen}", timeout=timeout)
