"""Fixtures of the node tests: ``ctrlplane serve`` with the ``docker`` and ``nodes`` providers, and
real agents (``ctrlplane-agent`` processes) on the shared Docker engine, each with its own state
directory and node identity. Every agent is ended by its pid, and every object its cluster
(``node-<node id>``) made is removed afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import msgspec
import pytest
from docker import DockerClient

from ctrlplane.agent.runtime import node_cluster_name
from ctrlplane.db import Database
from ctrlplane.settings import Settings
from tests import forkserve
from tests.conftest import Tokens, bearer
from tests.harness import ServeProcess
from tests.providers.docker_engine import docker_engine, ensure_variant_images, remove_cluster  # noqa: F401
from tests.waiting import eventually

HEARTBEAT_TIMEOUT_SECONDS = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, providers=("docker", "nodes"))


@pytest.fixture
def server_env() -> dict[str, str]:
    """More ``CTRLPLANE_*`` settings of the server (a module overrides this fixture)."""
    return {}


@pytest.fixture
def server(
    database_url: str,
    db: Database,
    tmp_path: Path,
    settings: Settings,
    docker_engine: DockerClient,
    server_env: dict[str, str],
) -> Iterator[ServeProcess]:
    ensure_variant_images(docker_engine)
    process = ServeProcess(
        database_url,
        tmp_path / "server",
        settings.cluster_name,
        **{
            "CTRLPLANE_PROVIDERS": "docker,nodes",
            "CTRLPLANE_NODE_HEARTBEAT_TIMEOUT": f"{HEARTBEAT_TIMEOUT_SECONDS}s",
            "CTRLPLANE_EVENT_POLL_SECONDS": "0.2",
            **server_env,
        },
    )
    try:
        yield process
    finally:
        process.stop()
        remove_cluster(docker_engine, settings.cluster_name)


@dataclass
class AgentProcess:
    """One ``ctrlplane-agent`` with its own state directory and log file."""

    name: str
    state_dir: Path
    url: str
    token: str | None
    extra: tuple[str, ...] = ()
    process: forkserve.Forked | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / f"{self.name}.log"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        command = [
            "--url", self.url, "--state-dir", str(self.state_dir),
            "--hostname", self.name, "--heartbeat-interval", "1", "--reconcile-interval", "2",
            "--telemetry-interval", "1", "--cpu-millis", "2000", "--memory-mb", "1024", *self.extra,
        ]  # fmt: skip
        if self.token:
            command += ["--token", self.token]
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
        self.process = forkserve.start("ctrlplane.agent.main", command, {**os.environ}, self.log_path)

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def identity(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "identity.json").read_text()))

    @property
    def node_id(self) -> str:
        return str(self.identity()["node_id"])

    @property
    def cluster(self) -> str:
        return node_cluster_name(self.node_id)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Fleet:
    server: ServeProcess
    tokens: Tokens
    root: Path
    engine: DockerClient
    agents: list[AgentProcess] = field(default_factory=list)

    async def bootstrap_token(self, http: httpx.AsyncClient, pool: str = "default") -> str:
        response = await http.post(
            "/v1/admin/nodes/enrollment-tokens",
            json={"pool": pool, "ttl": "1h"},
            headers=bearer(self.tokens.admin()),
        )
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    async def join(self, http: httpx.AsyncClient, name: str, *extra: str, url: str | None = None) -> AgentProcess:
        agent = AgentProcess(
            name, self.root / name / "state", url or self.server.url, await self.bootstrap_token(http), extra
        )
        agent.state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.agents.append(agent)
        agent.start()
        await eventually(
            lambda: (agent.state_dir / "identity.json").exists(), lambda: f"{name} registered: {agent.log()[-2000:]}"
        )
        return agent

    def containers(self, agent: AgentProcess, instance_id: str | None = None) -> list[Any]:
        labels = [f"ctrlplane.cluster={agent.cluster}", "ctrlplane.purpose=replica"]
        if instance_id:
            labels.append(f"ctrlplane.instance={instance_id}")
        found = []
        for summary in self.engine.containers.list(all=True, sparse=True, filters={"label": labels}):
            try:
                found.append(self.engine.containers.get(summary.id))
            except docker.errors.NotFound:  # removed between the listing and its inspection: gone
                continue
        return found

    def cleanup(self) -> None:
        for agent in self.agents:
            agent.stop()
        joined = [agent.cluster for agent in self.agents if (agent.state_dir / "identity.json").exists()]
        # two agents on one engine share a tenant's network (one name per engine), labelled with the
        # cluster of the agent that made it: it can go only once every agent's containers are gone
        for _ in range(2):
            for cluster in joined:
                remove_cluster(self.engine, cluster)


@pytest.fixture
async def fleet(
    server: ServeProcess, tokens: Tokens, tmp_path: Path, docker_engine: DockerClient
) -> AsyncIterator[Fleet]:
    await server.start()
    fleet = Fleet(server, tokens, tmp_path / "agents", docker_engine)
    try:
        yield fleet
    finally:
        fleet.cleanup()
