"""`ctrlplane run` and `ctrlplane deploy --release-command --wait` against a live server on a real
Docker engine: output streams through and the command's own exit code is the CLI's."""

from __future__ import annotations

import pytest
from docker import DockerClient

from tests.api.test_cli_pipeline import cli
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    _remove_what_the_test_made,
    providers,
    settings,
    tenant,
)
from tests.api.test_runs_docker import running, variant_images  # noqa: F401 - fixture
from tests.conftest import Api
from tests.providers.docker_engine import V2_IMAGE, docker_engine  # noqa: F401 - fixture

pytestmark = pytest.mark.docker


async def deploy_key(live: Api) -> str:
    created = await live.create_tenant("acme", plan="pro")
    token = {"Authorization": f"Bearer {live.tokens.tenant(created['id'])}"}
    await running(live, token)
    return str((await live.create_key(created["id"], ["deploy"]))["key"])


async def test_cli_run_streams_the_output_and_exits_with_the_commands_code(
    live: Api, live_server: str, docker_engine: DockerClient
) -> None:
    key = await deploy_key(live)
    failed = await cli(live_server, key, "run", "web", "--", "sh", "-c", "echo first; echo second >&2; exit 42")
    assert failed.returncode == 42, failed.stdout + failed.stderr
    assert failed.stdout.splitlines()[:2] == ["first", "second"] or set(failed.stdout.splitlines()) == {
        "first",
        "second",
    }
    passed = await cli(live_server, key, "run", "web", "--env", "WHO=ci", "--", "sh", "-c", "echo hello $WHO")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "hello ci" in passed.stdout


async def test_cli_deploy_wait_streams_the_release_output_and_exits_with_its_code(
    live: Api, live_server: str, docker_engine: DockerClient, variant_images: None
) -> None:
    key = await deploy_key(live)
    result = await cli(
        live_server,
        key,
        "deploy",
        "web",
        "--image",
        V2_IMAGE,
        "--release-command",
        "echo applying migration 0042; exit 3",
        "--wait",
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "release | applying migration 0042" in result.stdout
    assert "deploy.release_failed" in result.stdout
    assert "failed" in result.stdout.splitlines()[-1]
    ok = await cli(
        live_server, key, "deploy", "web", "--image", V2_IMAGE, "--release-command", "echo migrated", "--wait"
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "release | migrated" in ok.stdout
