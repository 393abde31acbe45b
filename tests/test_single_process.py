"""SQLite supports one server process: a second ``ctrlplane serve`` on the same database file is
refused at start with a message saying why, and a killed server leaves no stale lock behind."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import forkserve
from tests.conftest import JWT_SECRET
from tests.waiting import eventually_sync


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: forkserve.Forked
    url: str
    stderr: Path

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")


def _serve(data_dir: Path) -> Server:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")},
        "CTRLPLANE_DATA_DIR": str(data_dir),
        "CTRLPLANE_JWT_SECRET": JWT_SECRET,
        "CTRLPLANE_PORT": str(port),
        "CTRLPLANE_LOG_LEVEL": "warning",
        "CTRLPLANE_CLUSTER_NAME": f"test-{uuid.uuid4().hex[:12]}",
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    stderr = data_dir / f"serve-{uuid.uuid4().hex[:8]}.err"
    process = forkserve.Forked("ctrlplane.cli", ["serve"], env, Path(os.devnull), stderr)
    return Server(process, f"http://127.0.0.1:{port}", stderr)


def _wait_ready(server: Server) -> None:
    def ready() -> bool:
        assert server.process.poll() is None, f"ctrlplane serve exited: {server.errors()}"
        try:
            return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    eventually_sync(ready, "ctrlplane serve becoming ready", timeout=60)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(timeout=30)


# Slow by design: three lifetimes of a real `ctrlplane serve` (one refused, one SIGKILLed).
def test_second_server_on_the_same_sqlite_file_is_refused(tmp_path: Path, servers: list[Server]) -> None:
    first = _serve(tmp_path / "data")
    servers.append(first)
    _wait_ready(first)

    second = _serve(tmp_path / "data")
    servers.append(second)
    assert second.process.wait(timeout=60) == 2
    message = second.errors()
    assert "another ctrlplane server" in message
    assert f"pid {first.process.pid}" in message
    assert "SQLite supports one server process" in message
    assert "PostgreSQL" in message
    assert httpx.get(f"{first.url}/readyz", timeout=5).status_code == 200

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    third = _serve(tmp_path / "data")
    servers.append(third)
    _wait_ready(third)


# Slow by design: two real `ctrlplane serve` processes started side by side.
def test_servers_on_different_sqlite_files_run_side_by_side(tmp_path: Path, servers: list[Server]) -> None:
    one = _serve(tmp_path / "one")
    two = _serve(tmp_path / "two")
    servers.extend([one, two])
    _wait_ready(one)
    _wait_ready(two)
