"""Fixtures of the fault suite: the shared Docker engine's objects of this test's cluster are
removed afterwards, and a ``ctrlplane serve`` process per test (on the test's database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from docker import DockerClient

from ctrlplane.db import Database
from ctrlplane.settings import Settings
from tests.harness import ServeProcess
from tests.providers.docker_engine import docker_engine, ensure_variant_images, remove_cluster  # noqa: F401


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, providers=("docker",))


@pytest.fixture
def server(
    database_url: str, db: Database, tmp_path: Path, settings: Settings, docker_engine: DockerClient
) -> Iterator[ServeProcess]:
    """``ctrlplane serve`` on this test's database and cluster, on the shared Docker engine."""
    ensure_variant_images(docker_engine)
    process = ServeProcess(database_url, tmp_path / "server", settings.cluster_name)
    try:
        yield process
    finally:
        process.stop()
        remove_cluster(docker_engine, settings.cluster_name)
