"""A seconds-granularity job on two control-plane replicas sharing one PostgreSQL database and one
Docker engine: every firing runs exactly once (no duplicate, no gap), really in a container."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from ctrlplane_docker.provider import DockerProvider
from docker import DockerClient
from sqlalchemy import select

from ctrlplane.app import create_app
from ctrlplane.db import Database, connect
from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.runs import cron
from ctrlplane.runs.models import Job, Run
from ctrlplane.runs.schemas import TERMINAL
from ctrlplane.settings import Settings
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_docker import APP, _remove_what_the_test_made  # noqa: F401 - fixture
from tests.conftest import Api, bearer
from tests.providers.docker_engine import docker_engine  # noqa: F401 - fixture
from tests.waiting import eventually

pytestmark = [pytest.mark.docker, pytest.mark.dialects]


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, providers=("docker",), job_allow_seconds=True, job_tick_seconds=0.3, run_workers=2
    )


async def serve(settings: Settings, name: str) -> tuple[uvicorn.Server, asyncio.Task[None], Database, str]:
    replica_settings = msgspec.structs.replace(settings, replica_name=name)
    db = connect(replica_settings.resolved_database_url)
    app = create_app(
        replica_settings, providers=ProviderRegistry([DockerProvider(provider_settings(replica_settings))]), db=db
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, f"replica {name} serving")
    return server, task, db, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


@pytest.fixture
async def two_replicas(settings: Settings, db: Database) -> AsyncIterator[list[str]]:
    started = [await serve(settings, "a"), await serve(settings, "b")]
    yield [url for *_, url in started]
    for server, task, replica_db, _ in started:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)
        await replica_db.dispose()


async def firings(db: Database, job_id: str, count: int) -> bool:
    async with db.read() as session:
        moments = set((await session.execute(select(Run.scheduled_at).where(Run.job_id == job_id))).scalars())
    return len(moments) >= count


async def runs_ended(db: Database, job_id: str) -> bool:
    async with db.read() as session:
        states = list((await session.execute(select(Run.state).where(Run.job_id == job_id))).scalars())
    return all(state in TERMINAL for state in states)


# Slow by design: five two-second periods of the job on two replicas, and a container run per firing.
async def test_a_per_two_seconds_job_fires_exactly_once_per_period_across_two_replicas(
    two_replicas: list[str], tokens: Any, db: Database, docker_engine: DockerClient
) -> None:
    a_url, b_url = two_replicas
    async with httpx.AsyncClient(base_url=a_url, timeout=30) as a, httpx.AsyncClient(base_url=b_url, timeout=30) as b:
        api_a = Api(a, tokens)
        tenant = await api_a.create_tenant("acme", plan="pro")
        token = bearer(tokens.tenant(tenant["id"]))
        created = await a.post("/v1/instances", json={**APP, "name": "web"}, headers=token)
        instance = await wait_for(api_a, created.json()["id"], token, state("running"), timeout=60)
        job = await b.post(
            f"/v1/instances/{instance['id']}/jobs",
            json={"name": "tick", "schedule": "*/2 * * * * *", "command": "echo tick", "concurrency": "allow"},
            headers=token,
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        # five periods of firing by either replica
        await eventually(lambda: firings(db, job_id, 5), "five firings of the job", timeout=30)
        disabled = await a.patch(f"/v1/jobs/{job.json()['id']}", json={"enabled": False}, headers=token)
        assert disabled.status_code == 200, disabled.text
        # the job's row lock orders a firing before the disable or shows it disabled: no firing comes
        # after this answer, and the last firings' runs end
        await eventually(lambda: runs_ended(db, job_id), "the last firings' runs ending", timeout=30)
    async with db.read() as session:
        row = await session.get(Job, job.json()["id"])
        assert row is not None
        runs = list((await session.execute(select(Run).where(Run.job_id == row.id))).scalars())
        created_at: datetime = row.created_at
        last: datetime = row.last_scheduled_at
    expected = cron.due(row.schedule, row.timezone, created_at, last)
    counts = Counter(run.scheduled_at for run in runs)
    assert len(expected) >= 4, expected
    assert [moment for moment, n in counts.items() if n > 1] == []
    assert sorted(counts) == expected, "a firing was skipped or invented"
    assert {run.state for run in runs} == {"succeeded"}, [(r.state, r.error) for r in runs]
    assert {run.output for run in runs} == {"tick"}
