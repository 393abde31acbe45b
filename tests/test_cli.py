from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest

from tests import forkserve

SERVING = re.compile(r"serving on (http://\S+)")


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_") or k.startswith("CTRLPLANE_TEST_")}
    # a cluster name of its own: a server started here shares the Docker engine with other tests' servers
    cluster = f"test-{uuid.uuid4().hex[:12]}"
    return {
        **env,
        "CTRLPLANE_DATA_DIR": str(data_dir),
        "CTRLPLANE_LOG_FORMAT": "json",
        "CTRLPLANE_CLUSTER_NAME": cluster,
        **extra,
    }


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m ctrlplane.cli ARGS``, forked from the worker's fork server (tests/forkserve.py;
    the README's walkthrough runs the installed ``ctrlplane`` command itself)."""
    return forkserve.run("ctrlplane.cli", args, env, timeout=60)


def test_token_issue_signs_with_the_generated_server_key(tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = _run(["token", "issue", "--tenant", "ten_x", "--roles", "deploy,read", "--ttl", "30m"], env)
    assert result.returncode == 0, result.stderr
    secret = (tmp_path / "jwt-signing-key").read_text().strip()
    assert oct((tmp_path / "jwt-signing-key").stat().st_mode & 0o777) == "0o600"
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["tenant_id"] == "ten_x"
    assert claims["roles"] == ["deploy", "read"]
    assert claims["sub"] == "tenant-user"
    assert 1790 <= claims["exp"] - claims["iat"] <= 1800


def test_admin_token_has_no_tenant(tmp_path: Path) -> None:
    result = _run(["token", "issue", "--admin"], _env(tmp_path))
    claims = jwt.decode(result.stdout.strip(), options={"verify_signature": False})
    assert "tenant_id" not in claims
    assert claims["roles"] == ["admin"]
    assert claims["system_admin"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["token", "issue", "--admin", "--ttl", "soon"],
        ["token", "issue", "--tenant", "ten_x", "--roles", "root"],
        ["token", "issue", "--admin", "--roles", "read"],
        ["token", "issue", "--admin", "--ttl", "25h"],
    ],
)
def test_bad_token_arguments_exit_2_with_a_message(tmp_path: Path, args: list[str]) -> None:
    result = _run(args, _env(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("ctrlplane:")


def test_bad_configuration_exits_2_naming_the_variable(tmp_path: Path) -> None:
    result = _run(["migrate"], _env(tmp_path, CTRLPLANE_JWT_ALGORITHMS="RS256"))
    assert result.returncode == 2
    assert "CTRLPLANE_JWT_PUBLIC_KEY" in result.stderr


def test_serve_migrates_generates_a_key_and_answers(tmp_path: Path) -> None:
    env = _env(tmp_path, CTRLPLANE_PROVIDERS="docker")
    log_path = tmp_path / "serve.log"
    log_path.touch()  # the child opens it for appending once forked
    # port 0: the kernel picks a free port and the "serving on" line names it (no pick-then-bind race)
    server = forkserve.start("ctrlplane.cli", ["serve", "--port", "0"], env, log_path)
    try:
        deadline = time.monotonic() + 30
        url = None
        while True:
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server did not become ready"
            found = SERVING.search(log_path.read_text())
            if found is not None:
                url = found.group(1)
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        assert url is not None and not url.endswith(":0")
        token = _run(["token", "issue", "--admin"], env).stdout.strip()
        response = httpx.post(
            f"{url}/v1/admin/tenants",
            json={"name": "Acme", "slug": "acme"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201
        assert (tmp_path / "ctrlplane.db").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = log_path.read_text()
    assert "signing_key_generated" in output
    assert "token issue --admin" in output
    assert f"console:     {url}/console" in output and f"API docs:    {url}/docs" in output
    assert token not in output
    assert "secrets_master_key_generated" in output and "back this file up" in output
    ring = (tmp_path / "secrets-master-keys").read_text()
    assert oct((tmp_path / "secrets-master-keys").stat().st_mode & 0o777) == "0o600"
    assert ring.split("1:", 1)[1].split()[0] not in output


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    result = _run(["migrate"], _env(tmp_path))
    assert result.returncode == 0, result.stderr
    verify = _run(["audit", "verify"], _env(tmp_path))
    assert verify.returncode == 0
    assert "0 entries" in verify.stdout


def test_serve_refuses_a_malformed_master_key_ring_without_echoing_it(tmp_path: Path) -> None:
    ring = "1:c2hvcnQ=,2:bm90LWEta2V5LWF0LWFsbA=="
    result = _run(["serve", "--port", "0"], _env(tmp_path, CTRLPLANE_SECRETS_MASTER_KEYS=ring))
    assert result.returncode == 2, result.stderr
    assert "CTRLPLANE_SECRETS_MASTER_KEYS" in result.stderr
    assert "c2hvcnQ=" not in result.stderr


def test_serve_refuses_an_unusable_docker_setting_naming_it(tmp_path: Path) -> None:
    env = _env(tmp_path, CTRLPLANE_PROVIDERS="docker", CTRLPLANE_ROUTER="none", CTRLPLANE_DOCKER_SUBNET_POOL="docker0")
    result = _run(["serve", "--port", "0"], env)
    assert result.returncode == 2, result.stderr
    assert "ctrlplane: CTRLPLANE_DOCKER_SUBNET_POOL must be an IPv4 network" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_configuration_error_names_the_environment_variable(tmp_path: Path) -> None:
    result = _run(["migrate"], _env(tmp_path, CTRLPLANE_WORKERS="many"))
    assert result.returncode == 2
    assert result.stderr.strip() == "ctrlplane: CTRLPLANE_WORKERS='many': expected `int`, got `str`"
    hidden = _run(["migrate"], _env(tmp_path, CTRLPLANE_JWT_LEEWAY_SECONDS="lots"))
    assert hidden.returncode == 2 and "CTRLPLANE_JWT_LEEWAY_SECONDS" in hidden.stderr and "$." not in hidden.stderr


def test_a_busy_port_is_one_line_naming_ctrlplane_port_and_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(["serve", "--port", str(port)], _env(tmp_path, CTRLPLANE_ROUTER="none"))
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON lines: the log
    assert line.startswith(f"ctrlplane: port {port} on 127.0.0.1 is already in use"), result.stderr
    assert f"CTRLPLANE_PORT={port + 1}" in line and f"--port {port + 1}" in line
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr
