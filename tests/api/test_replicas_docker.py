"""Two ``ctrlplane serve`` replicas on one PostgreSQL database and a real Docker engine: the
replica running an operation is killed with SIGKILL and the other one finishes it once the lease
expires, leaving exactly the containers the instance asks for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker import DockerClient
from sqlalchemy import select

from ctrlplane.db import Database
from ctrlplane.operations.models import Operation
from ctrlplane.settings import Settings
from tests.api.test_instances import create, state, wait_for
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    APP,
    _remove_what_the_test_made,
    answers_on_its_endpoint,
    containers_of,
    docker_engine,
    tenant,
)
from tests.conftest import Api, Tokens
from tests.harness import ServeProcess

pytestmark = pytest.mark.docker


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
async def two_replicas(db: Database, tmp_path: Path, settings: Settings) -> AsyncIterator[dict[str, ServeProcess]]:
    servers = {}
    for name in ("a", "b"):
        servers[name] = ServeProcess(
            settings.resolved_database_url, tmp_path / name, settings.cluster_name,
            ready_path="/readyz", CTRLPLANE_REPLICA_NAME=name,
        )  # fmt: skip
    try:
        await asyncio.gather(*(server.start() for server in servers.values()))
        yield servers
    finally:
        for server in servers.values():
            server.stop()


async def _running_operation(db: Database, instance_id: str, timeout: float = 30) -> Operation:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        async with db.read() as session:
            operation = (
                await session.execute(select(Operation).where(Operation.instance_id == instance_id))
            ).scalar_one_or_none()
        if operation is not None and operation.state == "running":
            return operation
        assert operation is None or operation.state == "pending", f"operation ended before a kill: {operation.state}"
        await asyncio.sleep(0.005)
    raise AssertionError("no replica claimed the operation")


async def test_replica_killed_mid_operation_is_finished_by_the_other(
    two_replicas: dict[str, ServeProcess], db: Database, tokens: Tokens, docker_engine: DockerClient
) -> None:
    async with httpx.AsyncClient(base_url=two_replicas["a"].url, timeout=10) as http:
        token = await tenant(Api(http, tokens), "acme")
        instance = await create(Api(http, tokens), token, name="web", replicas=2, **APP)
    operation = await _running_operation(db, instance["id"])
    assert operation.lease_owner is not None
    owner = operation.lease_owner.split("/", 1)[0]
    two_replicas[owner].kill()
    survivor = two_replicas["b" if owner == "a" else "a"]

    async with httpx.AsyncClient(base_url=survivor.url, timeout=10) as http:
        remote: Any = Api(http, tokens)
        await wait_for(remote, instance["id"], token, state("running"), timeout=60)
        assert await answers_on_its_endpoint(remote, instance["id"], token)
    async with db.read() as session:
        finished = await session.get(Operation, operation.id)
    assert finished is not None
    assert finished.state == "succeeded"
    assert finished.attempts >= 2, "the survivor claimed it again after the lease expired"
    await asyncio.sleep(1.5)
    assert len(containers_of(docker_engine, instance["id"])) == 2
