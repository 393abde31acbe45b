"""The installation's ID and default cluster name (ctrlplane/installation.py), and the warning when
another installation uses the same cluster name on the same Docker engine."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio.to_thread
import pytest
import structlog
from ctrlplane_docker import DockerProvider
from ctrlplane_docker.naming import object_labels
from docker import DockerClient

from ctrlplane.installation import INSTALLATION_FILE, resolve, warn_if_shared
from ctrlplane.provisioning.contract import ProviderSettings
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings, SettingsError
from tests.harness import ServeProcess
from tests.providers.docker_engine import docker_engine, remove_cluster

__all__ = ["docker_engine"]


def test_the_default_cluster_name_is_unique_per_data_directory_and_stable(tmp_path: Path) -> None:
    first = resolve(Settings(data_dir=str(tmp_path / "a")), environ={})
    again = resolve(Settings(data_dir=str(tmp_path / "a")), environ={})
    other = resolve(Settings(data_dir=str(tmp_path / "b")), environ={})
    assert first.cluster_name == f"ctrlplane-{first.installation_id[:8]}"
    assert (again.installation_id, again.cluster_name) == (first.installation_id, first.cluster_name)
    assert other.installation_id != first.installation_id and other.cluster_name != first.cluster_name
    first.validate()  # a DNS label, as CTRLPLANE_CLUSTER_NAME must be


def test_a_cluster_name_that_is_set_wins_and_the_id_is_still_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), cluster_name="prod")
    resolved = resolve(settings, environ={"CTRLPLANE_CLUSTER_NAME": "prod"})
    assert resolved.cluster_name == "prod" and len(resolved.installation_id) == 12
    assert (tmp_path / INSTALLATION_FILE).exists()


def test_a_data_directory_from_before_keeps_the_old_default(tmp_path: Path) -> None:
    (tmp_path / "ctrlplane.db").write_bytes(b"")  # an installation that ran before the file existed
    assert resolve(Settings(data_dir=str(tmp_path)), environ={}).cluster_name == "ctrlplane"


def test_replicas_on_one_database_share_the_id_and_the_name(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://postgres@127.0.0.1:5432/prod"
    one = resolve(Settings(data_dir=str(tmp_path / "one"), database_url=url), environ={})
    two = resolve(Settings(data_dir=str(tmp_path / "two"), database_url=url), environ={})
    assert one.installation_id == two.installation_id and one.installation_id.startswith("db-")
    assert one.cluster_name == two.cluster_name == "ctrlplane"


def test_a_damaged_installation_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / INSTALLATION_FILE).write_text("{not json")
    with pytest.raises(SettingsError, match="remove it"):
        resolve(Settings(data_dir=str(tmp_path)), environ={})


@pytest.mark.docker
async def test_another_installation_with_the_same_cluster_name_is_warned_about(docker_engine: DockerClient) -> None:
    cluster = f"test-shared-{uuid.uuid4().hex[:8]}"
    labels = object_labels(cluster=cluster, purpose="network", tenant_id="ten_x", installation="theirs")
    await anyio.to_thread.run_sync(lambda: docker_engine.networks.create(f"cp-{cluster}", labels=labels))
    ours = DockerProvider(ProviderSettings(cluster_name=cluster, installation_id="ours"))
    theirs = DockerProvider(ProviderSettings(cluster_name=cluster, installation_id="theirs"))
    try:
        assert await ours.other_installations() == ["theirs"]
        assert await theirs.other_installations() == []
        with structlog.testing.capture_logs() as logs:
            await warn_if_shared(Settings(cluster_name=cluster, installation_id="ours"), ProviderRegistry([ours]))
        [warning] = [entry for entry in logs if entry["event"] == "cluster_name_shared"]
        assert warning["log_level"] == "warning" and warning["other_installations"] == ["theirs"]
        assert "CTRLPLANE_CLUSTER_NAME" in warning["hint"]
        with structlog.testing.capture_logs() as quiet:
            await warn_if_shared(Settings(cluster_name=cluster, installation_id="theirs"), ProviderRegistry([theirs]))
        assert not [entry for entry in quiet if entry["event"] == "cluster_name_shared"]
    finally:
        await ours.close()
        await theirs.close()
        await anyio.to_thread.run_sync(remove_cluster, docker_engine, cluster)


@pytest.mark.docker
async def test_serve_warns_at_start_when_its_cluster_name_is_taken(docker_engine: DockerClient, tmp_path: Path) -> None:
    cluster = f"test-shared-{uuid.uuid4().hex[:8]}"
    labels = object_labels(cluster=cluster, purpose="network", tenant_id="ten_x", installation="another-checkout")
    await anyio.to_thread.run_sync(lambda: docker_engine.networks.create(f"cp-{cluster}", labels=labels))
    server = ServeProcess(
        f"sqlite+aiosqlite:///{tmp_path / 'ctrlplane.db'}", tmp_path, cluster, CTRLPLANE_LOG_LEVEL="info"
    )
    try:
        await server.start()
        log = server.log_path.read_text()
        [line] = [line for line in log.splitlines() if "cluster_name_shared" in line]
        assert '"level": "warning"' in line and "another-checkout" in line and cluster in line
    finally:
        server.stop()
        await anyio.to_thread.run_sync(remove_cluster, docker_engine, cluster)
