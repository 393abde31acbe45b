"""SIGKILL of the server during environment get-or-creates and during an environment's expiry, on
the real Docker engine: after the restarts there is exactly one active environment per key, every
environment's instance is where it should be, and the engine holds no orphan (see kill.py's
``converged``: one container per replica of each live instance, none for others)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from docker import DockerClient
from sqlalchemy import text

from ctrlplane.db import Database
from ctrlplane.settings import Settings
from tests.conftest import Tokens, bearer
from tests.faults.kill import APP, Ledger, converged
from tests.harness import ServeProcess
from tests.providers.docker_engine import ensure_variant_images, remove_cluster

pytestmark = [
    pytest.mark.docker,
    pytest.mark.faults,
    pytest.mark.dialects("crash recovery and parallel get-or-creates: locks, leases and the active-key unique index"),
]

TEMPLATE = {"name": "preview", "spec": APP, "max_ttl": "1d"}
RUNS = 4


@pytest.fixture
def server(
    database_url: str, db: Database, tmp_path: Path, settings: Settings, docker_engine: DockerClient
) -> Iterator[ServeProcess]:
    ensure_variant_images(docker_engine)
    process = ServeProcess(database_url, tmp_path / "server", settings.cluster_name, CTRLPLANE_ROUTER="none")
    try:
        yield process
    finally:
        process.stop()
        remove_cluster(docker_engine, settings.cluster_name)


async def _setup(http: httpx.AsyncClient, tokens: Tokens) -> dict[str, str]:
    created = await http.post(
        "/v1/admin/tenants",
        json={"name": "Faults", "slug": "faults", "plan": "pro"},
        headers=bearer(tokens.admin()),
    )
    assert created.status_code == 201, created.text
    token = bearer(tokens.tenant(created.json()["id"]))
    assert (await http.post("/v1/templates", json=TEMPLATE, headers=token)).status_code == 201
    return token


async def _get_or_create(
    http: httpx.AsyncClient, token: dict[str, str], key: str, **body: str
) -> httpx.Response | None:
    try:
        return await http.post("/v1/environments", json={"key": key, "template": "preview", **body}, headers=token)
    except httpx.TransportError:
        return None


async def _environments(db: Database) -> list[dict[str, object]]:
    async with db.read() as session:
        rows = await session.execute(text("SELECT id, key, state, instance_id FROM environments ORDER BY id"))
        return [dict(row._mapping) for row in rows]


# Slow by design: RUNS server lifetimes killed during get-or-creates, then convergence on the real engine.
@pytest.mark.dialects("crash recovery under concurrent get-or-creates: the unique index and the killed transaction")
async def test_killed_during_get_or_create_leaves_one_environment_per_key_and_no_orphans(
    server: ServeProcess, db: Database, tokens: Tokens, settings: Settings
) -> None:
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        token = await _setup(http, tokens)
        for run in range(RUNS):
            rng = random.Random(f"envs:{run}")
            key = f"pr-{run % 2}"
            requests = [asyncio.ensure_future(_get_or_create(http, token, key)) for _ in range(3)]
            await asyncio.sleep(0.6 * rng.random())
            server.kill()
            answers = await asyncio.gather(*requests)
            print(f"run={run} key={key} answers={[a.status_code if a else 'cut off' for a in answers]}")
            await server.start()
            http.base_url = server.url
        final = {}
        for key in ("pr-0", "pr-1"):
            response = await _get_or_create(http, token, key)
            assert response is not None and response.status_code in (200, 201), response
            final[key] = response.json()["id"]
        environments = await _environments(db)
        active = [e for e in environments if e["state"] == "active"]
        assert sorted(str(e["key"]) for e in active) == ["pr-0", "pr-1"], environments
        assert {str(e["id"]) for e in active} == set(final.values())
        ledger = Ledger(created=[str(e["instance_id"]) for e in active])
        await converged(http, db, settings, ledger)


# Slow by design: the environment's TTL runs out across a SIGKILL and a restart of the server.
async def test_killed_during_expiry_terminates_it_after_the_restart_with_no_orphans(
    server: ServeProcess, db: Database, tokens: Tokens, settings: Settings
) -> None:
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        token = await _setup(http, tokens)
        response = await _get_or_create(http, token, "pr-1", ttl="4s")
        assert response is not None and response.status_code == 201, response
        environment = response.json()
        keeper = await _get_or_create(http, token, "keep")
        assert keeper is not None and keeper.status_code == 201
        # the kill lands around the expiry: before it, while the keeper terminates, or while the
        # worker removes the containers
        await asyncio.sleep(3.0 + 2.5 * random.Random("expiry").random())
        server.kill()
        await server.start()
        http.base_url = server.url
        for _ in range(240):
            current = (await http.get(f"/v1/environments/{environment['id']}", headers=token)).json()
            if current["state"] == "terminated":
                break
            await asyncio.sleep(0.25)
        assert current["state"] == "terminated", current
        assert current["termination_reason"] == "expired"
        await converged(http, db, settings, Ledger(created=[keeper.json()["instance_id"]]))
        instances = {str(e["instance_id"]): e["state"] for e in await _environments(db) if e["instance_id"] is not None}
        assert instances[environment["instance_id"]] == "terminated"
