"""PostgreSQL restarted under load: ``/readyz`` says 503 while it is down and 200 after; no request
ever gets a 500 (only 2xx, 4xx or 503 ``unavailable``); afterwards the data is consistent.

The database is a private PostgreSQL cluster of this test (initdb + pg_ctl in a temporary dir, on
127.0.0.1 and a random port; tests/faults/harness.py ``PrivatePostgres``), so the shared server on
5432 is never restarted. It is stopped twice, once ``-m fast`` and once ``-m immediate`` (a crash:
recovery replays the WAL), while a bounded stream of reads and writes, with a JWT and with an API
key, goes on. PostgreSQL only: the fault is PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from docker import DockerClient

from ctrlplane.settings import Settings
from tests.conftest import JWT_SECRET, Tokens, bearer
from tests.faults.harness import OK_OR_CLIENT_ERROR, PrivatePostgres, audit_request_ids, private_postgres
from tests.faults.kill import APP, until_running
from tests.harness import ServeProcess
from tests.providers.docker_engine import remove_cluster

pytestmark = [pytest.mark.docker, pytest.mark.faults, pytest.mark.postgres]

MAX_REQUESTS = 3000
MAX_INSTANCES = 2


@pytest.fixture
def tokens() -> Tokens:
    """Tokens for the server's secret (not the parametrised ``settings``: this test is PostgreSQL's alone)."""
    return Tokens(Settings(jwt_secret=JWT_SECRET))


@pytest.fixture
def cluster() -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="cppg-", dir="/tmp"))
    try:
        with private_postgres(root) as postgres:
            yield postgres
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server(cluster: PrivatePostgres, tmp_path: Path, docker_engine: DockerClient) -> Iterator[ServeProcess]:
    process = ServeProcess(cluster.url, tmp_path / "server", f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield process
    finally:
        process.stop()
        remove_cluster(docker_engine, process.env["CTRLPLANE_CLUSTER_NAME"])


@dataclass
class Traffic:
    statuses: list[tuple[str, int, str]] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)
    tenants: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0


async def hammer(
    http: httpx.AsyncClient,
    traffic: Traffic,
    worker: int,
    admin: dict[str, str],
    tenant: dict[str, str],
    key: dict[str, str],
) -> None:
    step = 0
    while not traffic.stop.is_set() and traffic.sent < MAX_REQUESTS:
        step += 1
        traffic.sent += 1
        request_id = f"pg-{worker}-{step}-{uuid.uuid4().hex[:8]}"
        kind = ("list", "create_tenant", "list_by_key", "get_tenant", "create_instance")[step % 5]
        headers = {"X-Request-ID": request_id}
        if kind == "list":
            call = http.get("/v1/instances", headers={**headers, **tenant})
        elif kind == "list_by_key":
            call = http.get("/v1/instances?limit=5", headers={**headers, **key})
        elif kind == "get_tenant":
            call = http.get("/v1/admin/tenants?limit=5", headers={**headers, **admin})
        elif kind == "create_instance" and len(traffic.instances) < MAX_INSTANCES:
            call = http.post("/v1/instances", json={**APP, "name": f"i{worker}-{step}"}, headers={**headers, **tenant})
        else:
            kind = "create_tenant"
            slug = f"t{worker}x{step}"
            call = http.post("/v1/admin/tenants", json={"name": slug, "slug": slug}, headers={**headers, **admin})
        response = await call
        traffic.statuses.append((kind, response.status_code, response.text[:300]))
        if response.is_success and kind.startswith("create"):
            traffic.accepted[request_id] = kind
            (traffic.tenants if kind == "create_tenant" else traffic.instances).append(response.json()["id"])
        await asyncio.sleep(0.02)


async def readiness(http: httpx.AsyncClient, want: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = (await http.get("/readyz")).status_code
        if seen == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never said {want} in {timeout}s (last {seen})")


# Slow by design: a private PostgreSQL cluster is stopped and started under a running server.
async def test_postgres_restarted_readyz_goes_503_and_back_and_no_request_gets_a_500(
    cluster: PrivatePostgres, server: ServeProcess, tokens: Tokens
) -> None:
    await server.start()
    admin = bearer(tokens.admin())
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await readiness(http, 200)
        created = await http.post("/v1/admin/tenants", json={"name": "Db", "slug": "db", "plan": "pro"}, headers=admin)
        assert created.status_code == 201, created.text
        tenant = bearer(tokens.tenant(created.json()["id"]))
        key = await http.post("/v1/keys", json={"name": "ci", "roles": ["admin"]}, headers=tenant)
        assert key.status_code == 201, key.text
        by_key = bearer(key.json()["key"])
        traffic = Traffic()
        workers = [asyncio.create_task(hammer(http, traffic, n, admin, tenant, by_key)) for n in range(4)]
        try:
            for mode in ("fast", "immediate"):
                await asyncio.sleep(1.0)
                await asyncio.to_thread(cluster.stop, mode)
                await readiness(http, 503)
                await asyncio.sleep(1.5)  # the stream goes on against a database that is down
                await asyncio.to_thread(cluster.start)
                await readiness(http, 200)
            await asyncio.sleep(1.0)
        finally:
            traffic.stop.set()
            await asyncio.gather(*workers)

        statuses = [status for _, status, _ in traffic.statuses]
        bad = [entry for entry in traffic.statuses if entry[1] not in OK_OR_CLIENT_ERROR and entry[1] != 503]
        assert not bad, f"responses that are neither 2xx, 4xx nor 503: {bad[:5]}"
        assert 503 in statuses, "no request saw the database down"
        assert sum(200 <= s < 300 for s in statuses) > 10
        for _, status, body in traffic.statuses:
            if status == 503:
                assert '"code":"unavailable"' in body.replace(" ", "") or "unavailable" in body, body

        # consistent afterwards: every accepted write is there, in the audit log, and carried out
        for tenant_id in traffic.tenants:
            assert (await http.get(f"/v1/admin/tenants/{tenant_id}", headers=admin)).status_code == 200
        for instance_id in traffic.instances:
            try:
                await until_running(http, instance_id, tenant, timeout=90)
            except AssertionError as error:
                raise AssertionError(f"{error}\n--- server log:\n{server.log_path.read_text()[-20000:]}") from None
        audited = await audit_request_ids(http, admin)
        missing = {rid: kind for rid, kind in traffic.accepted.items() if rid not in audited}
        assert not missing, f"accepted writes missing from the audit log: {missing}"
    crashes = [line for line in server.log_path.read_text().splitlines() if "Exception in ASGI application" in line]
    assert not crashes, server.tail()
    verify = server.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
