"""The Docker engine stops in the middle of an operation, then comes back.

The engine is a private ``dockerd`` of this test (tests/faults/harness.py ``PrivateDockerd``: in a
network namespace of its own, with its own socket, data root, exec root and pid file, and no
iptables rules), so stopping it is the real fault and the shared engine is never touched. The
provider's per-tenant bridge networks work on it (user-defined bridges inside its namespace;
published ports are served by docker-proxy on the namespace's 127.0.0.1, which needs no iptables,
and the test reaches them from inside the namespace).

What it proves: an instance accepted just before the engine goes waits ("waiting for the
provider", retried with backoff, the operation still pending) instead of failing; while the engine
is down, actions that need it answer 503 ``provider_unavailable`` and reads still answer; once the
engine is back (on the same data root: its containers come back exited, as after any engine
restart) the waiting create completes, the old instance runs again, new creates are accepted, and
the engine's inventory matches the database.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from ctrlplane_docker import DockerProvider
from sqlalchemy import text

from ctrlplane.db import Database
from ctrlplane.provisioning.registry import provider_settings
from ctrlplane.settings import Settings
from tests.conftest import Tokens, bearer
from tests.faults.harness import OK_OR_CLIENT_ERROR, PrivateDockerd
from tests.faults.kill import APP, _database_view, _mismatches, until_running
from tests.harness import ServeProcess
from tests.providers.docker_engine import INDEX_BODY, ensure_image

pytestmark = [pytest.mark.docker, pytest.mark.faults]


@pytest.fixture
def engine() -> Iterator[PrivateDockerd]:
    # a short path: containerd's sockets live under the exec root and unix paths are short
    root = Path(tempfile.mkdtemp(prefix="cpdk-", dir="/tmp"))
    dockerd = PrivateDockerd(root)
    try:
        dockerd.start()
        client = docker.DockerClient(base_url=dockerd.host, timeout=60)
        ensure_image(client)
        client.close()
        yield dockerd
    finally:
        dockerd.destroy()
        for _ in range(10):  # lazily unmounted overlay dirs may be busy for a moment
            shutil.rmtree(root, ignore_errors=True)
            if not root.exists():
                break
            time.sleep(0.5)


@pytest.fixture
def server(
    database_url: str, db: Database, tmp_path: Path, settings: Settings, engine: PrivateDockerd
) -> Iterator[ServeProcess]:
    process = ServeProcess(database_url, tmp_path / "server", settings.cluster_name, DOCKER_HOST=engine.host)
    try:
        yield process
    finally:
        process.stop()


async def _operation_of(db: Database, instance_id: str) -> dict[str, Any]:
    async with db.read() as session:
        row = (
            await session.execute(
                text("SELECT state, attempts, error FROM operations WHERE instance_id = :i ORDER BY id"),
                {"i": instance_id},
            )
        ).first()
    assert row is not None
    return dict(row._mapping)


async def _answers(
    http: httpx.AsyncClient, engine: PrivateDockerd, instance_id: str, token: dict[str, str], timeout: float = 60
) -> bool:
    """Whether the instance serves the test page on an endpoint it reports (reached inside the
    engine's network namespace, where its ports are published)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for endpoint in (await http.get(f"/v1/instances/{instance_id}", headers=token)).json()["endpoints"]:
            if await asyncio.to_thread(engine.http_get, endpoint["url"] + "/") == INDEX_BODY:
                return True
        await asyncio.sleep(0.2)
    return False


async def test_engine_stopped_mid_operation_callers_get_503_and_work_completes_when_it_is_back(
    server: ServeProcess, engine: PrivateDockerd, db: Database, tokens: Tokens, settings: Settings
) -> None:
    await server.start()
    admin = bearer(tokens.admin())
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        tenant = await http.post(
            "/v1/admin/tenants", json={"name": "Outage", "slug": "outage", "plan": "pro"}, headers=admin
        )
        token = bearer(tokens.tenant(tenant.json()["id"]))
        before = (await http.post("/v1/instances", json={**APP, "name": "before"}, headers=token)).json()
        await until_running(http, before["id"], token)
        assert await _answers(http, engine, before["id"], token)

        # accepted while the engine answers, then the engine goes before the worker is done
        waiting = await http.post("/v1/instances", json={**APP, "name": "waiting"}, headers=token)
        assert waiting.status_code == 201, waiting.text
        engine.stop()
        accepted = [waiting.json()["id"]]

        # callers now get 503 provider_unavailable (after at most the registry's health cache)
        deadline, refused = time.monotonic() + 30, None
        while time.monotonic() < deadline and refused is None:
            response = await http.post("/v1/instances", json={**APP, "name": f"during{len(accepted)}"}, headers=token)
            assert response.status_code in (201, 503), response.text
            if response.status_code == 201:
                accepted.append(response.json()["id"])  # accepted before the outage was noticed
            else:
                refused = response
            await asyncio.sleep(0.2)
        assert refused is not None, "no 503 while the engine was down"
        assert refused.json()["code"] == "provider_unavailable"
        assert refused.json()["request_id"]
        stop = await http.post(f"/v1/instances/{before['id']}/stop", headers=token)
        assert stop.status_code == 503 and stop.json()["code"] == "provider_unavailable"
        # reads do not need the engine
        assert (await http.get(f"/v1/instances/{before['id']}", headers=token)).status_code == 200
        assert (await http.get("/v1/instances", headers=token)).status_code == 200

        # the accepted create waits for the engine, retried with backoff, instead of failing: between
        # two attempts it is pending (a sample that lands on a retry's claim reads running; look again)
        deadline, operation, body = time.monotonic() + 60, {}, {}
        while time.monotonic() < deadline:
            operation = await _operation_of(db, accepted[0])
            body = (await http.get(f"/v1/instances/{accepted[0]}", headers=token)).json()
            waiting = operation["state"] == "pending" and operation["attempts"] >= 2
            if waiting and "waiting for the provider" in body["status_message"]:
                break
            await asyncio.sleep(0.2)
        assert operation["state"] == "pending", operation
        assert operation["attempts"] >= 2, operation
        assert "unreachable" in (operation["error"] or ""), operation
        assert "waiting for the provider" in body["status_message"], body
        assert body["state"] == "provisioning", body

        engine.start()
        for instance_id in [*accepted, before["id"]]:
            await until_running(http, instance_id, token, timeout=90)
        assert await _answers(http, engine, accepted[0], token)
        assert await _answers(http, engine, before["id"], token)
        after = await http.post("/v1/instances", json={**APP, "name": "after"}, headers=token)
        assert after.status_code == 201, after.text
        await until_running(http, after.json()["id"], token, timeout=90)
        statuses = [r.status_code for r in (refused, stop, after)]
        assert all(s in OK_OR_CLIENT_ERROR or s == 503 for s in statuses)

    provider = DockerProvider(provider_settings(settings), base_url=engine.host)
    try:
        deadline, problems = time.monotonic() + 60, ["not checked"]
        while time.monotonic() < deadline and problems:
            instances, open_operations, _ = await _database_view(db)
            problems = _mismatches(instances, await provider.inventory())
            if open_operations:
                problems.append(f"{open_operations} operations open")
            await asyncio.sleep(0.5)
        assert not problems, problems
    finally:
        await provider.close()
