"""SQLite supports one server process: a second ``ctrlplane serve`` on the same database file is
refused at start with a message saying why, and a killed server leaves no stale lock behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import JWT_SECRET
from tests.waiting import eventually_sync


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")},
        "CTRLPLANE_DATA_DIR": str(data_dir),
        "CTRLPLANE_JWT_SECRET": JWT_SECRET,
        "CTRLPLANE_PORT": str(port),
        "CTRLPLANE_LOG_LEVEL": "warning",
        "CTRLPLANE_CLUSTER_NAME": f"test-{uuid.uuid4().hex[:12]}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ctrlplane.cli", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return process, f"http://127.0.0.1:{port}"


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    def ready() -> bool:
        assert process.poll() is None, (
            f"ctrlplane serve exited: {process.stderr.read().decode() if process.stderr else ''}"
        )
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    eventually_sync(ready, "ctrlplane serve becoming ready", timeout=60)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


# Slow by design: three lifetimes of a real `ctrlplane serve` (one refused, one SIGKILLed).
def test_second_server_on_the_same_sqlite_file_is_refused(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    first, url = _serve(tmp_path / "data")
    processes.append(first)
    _wait_ready(url, first)

    second, _ = _serve(tmp_path / "data")
    processes.append(second)
    assert second.wait(timeout=60) == 2
    message = second.stderr.read().decode() if second.stderr else ""
    assert "another ctrlplane server" in message
    assert f"pid {first.pid}" in message
    assert "SQLite supports one server process" in message
    assert "PostgreSQL" in message
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    third, third_url = _serve(tmp_path / "data")
    processes.append(third)
    _wait_ready(third_url, third)


# Slow by design: two real `ctrlplane serve` processes started side by side.
def test_servers_on_different_sqlite_files_run_side_by_side(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    one, one_url = _serve(tmp_path / "one")
    two, two_url = _serve(tmp_path / "two")
    processes.extend([one, two])
    _wait_ready(one_url, one)
    _wait_ready(two_url, two)
