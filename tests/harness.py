"""``ctrlplane serve`` as a real process of a test (so it can be SIGKILLed and started again).

The server binds port 0 and the kernel picks a free port; the ``serving on http://…`` line the
server writes to stderr (its log file here) names it. No port is picked in advance, so no other
process can take it between the pick and the bind (the EADDRINUSE race of bind-to-0-then-close).
Each lifetime gets a port of its own: ``url`` is the current one, and a client kept across a
restart is pointed at it again (``http.base_url = server.url``).

Every helper here ends exactly the process it started, by its pid.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests import forkserve
from tests.conftest import JWT_SECRET

SERVING = re.compile(rb"serving on (http://\S+)")


class ServeProcess:
    """``ctrlplane serve`` on a free loopback port, with its own data dir and log file."""

    def __init__(
        self, database_url: str, data_dir: Path, cluster_name: str, *, ready_path: str = "/healthz", **extra_env: str
    ) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_path = ready_path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")},
            "CTRLPLANE_DATABASE_URL": database_url,
            "CTRLPLANE_DATA_DIR": str(data_dir),
            "CTRLPLANE_JWT_SECRET": JWT_SECRET,
            "CTRLPLANE_PORT": "0",
            "CTRLPLANE_RECONCILE_INTERVAL_SECONDS": "0.5",
            "CTRLPLANE_OPERATION_LEASE_SECONDS": "2",
            "CTRLPLANE_LOG_LEVEL": "warning",
            "CTRLPLANE_CLUSTER_NAME": cluster_name,
            **extra_env,
        }
        self.process: forkserve.Forked | None = None
        self.lifetimes = 0
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The address of the current lifetime (set once it has bound its port)."""
        assert self._url is not None, "ctrlplane serve has not been started"
        return self._url

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    async def start(self, timeout: float = 90) -> None:
        """Start a new lifetime and wait until it answers ``ready_path`` with 200."""
        assert self.process is None or self.process.poll() is not None, "the previous lifetime is still running"
        self.lifetimes += 1
        self._url = None
        with self.log_path.open("ab") as log:
            log.write(f"--- lifetime {self.lifetimes}\n".encode())
            log.flush()
            offset = log.tell()
        self.process = forkserve.start("ctrlplane.cli", ["serve"], self.env, self.log_path)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"ctrlplane serve exited with {self.process.returncode}: {self.tail()}")
                if self._url is None:
                    with self.log_path.open("rb") as log:
                        log.seek(offset)
                        found = SERVING.search(log.read())
                    if found is not None:
                        self._url = found.group(1).decode()
                if self._url is not None:
                    try:
                        if (await client.get(f"{self._url}{self.ready_path}")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"ctrlplane serve did not answer in {timeout}s: {self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another ``ctrlplane`` command with this server's configuration."""
        return forkserve.run("ctrlplane.cli", args, self.env, timeout=120)
