"""What the fault suite shares (besides ``ctrlplane serve`` as a real process, tests/harness.py): a
private Docker engine (so it can be stopped without touching the shared one) and a private
PostgreSQL cluster (so it can be restarted without touching the shared one).

Every helper here starts processes of its own and ends exactly those, by their pid. A missing
``dockerd`` or PostgreSQL binary skips locally and FAILS with ``CI`` set (as tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import require_binary
from tests.ports import free_port

OK_OR_CLIENT_ERROR = range(200, 500)


async def audit_request_ids(http: httpx.AsyncClient, admin: dict[str, str]) -> set[str]:
    """Every request id in the audit log, through ``GET /v1/admin/audit`` page by page."""
    seen: set[str] = set()
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        response = await http.get("/v1/admin/audit", params=params, headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        seen.update(entry["request_id"] for entry in body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            return seen
    raise AssertionError("the audit log did not end within 1000 pages")


# --- a private Docker engine -------------------------------------------------------------------


class PrivateDockerd:
    """A second ``dockerd`` of this test alone, in a network namespace of its own (``ip netns``,
    kept across its restarts): its own socket, data root, exec root and pid file, its own
    ``docker0``, bridges, veths and port proxies, no iptables rules. Stopping it is the real fault
    ("the engine went away"); starting it again on the same data root brings back its containers
    (stopped, as a restarted engine leaves them) and networks.

    The namespace is not optional: a dockerd restarted on a data root deletes the ``docker0``
    interface of the namespace it runs in (and ``--bridge=none`` deletes it at once, moby's
    ``removeDefaultBridgeInterface``); in the host's namespace that is the *shared* engine's
    default bridge. The engine's socket is a file, so ctrlplane reaches it from the host; its
    published ports (127.0.0.1 in the namespace) are reached through ``http_get``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "d.sock"
        self.data_root = root / "data"
        self.exec_root = root / "x"
        rng = random.Random(os.getpid() ^ time.time_ns())
        self.netns = f"cpdk{rng.getrandbits(32):08x}"
        self.process: subprocess.Popen[bytes] | None = None

    def _ensure_netns(self) -> None:
        if Path(f"/run/netns/{self.netns}").exists():
            return
        require_binary("ip", "a network namespace for the private Docker engine")
        for command in (
            ["ip", "netns", "add", self.netns],
            ["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"],
        ):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"

    def http_get(self, url: str, timeout: int = 3) -> bytes | None:
        """GET ``url`` from inside the engine's namespace (a Python child there); None on failure."""
        fetch = (
            "import sys, urllib.request; "
            "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read())"
        )
        done = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", sys.executable, "-c", fetch, url, str(timeout)],
            capture_output=True,
            timeout=timeout + 20,
            check=False,
        )
        return done.stdout if done.returncode == 0 else None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60) -> None:
        binary = require_binary("dockerd", "a private Docker engine for the engine-outage test")
        self._ensure_netns()
        with (self.root / "dockerd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts
                    "nsenter",
                    f"--net=/run/netns/{self.netns}",
                    binary,
                    "-H",
                    self.host,
                    "--data-root",
                    str(self.data_root),
                    "--exec-root",
                    str(self.exec_root),
                    "--pidfile",
                    str(self.root / "d.pid"),
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"private dockerd exited: {self.tail()}")
            if self.answers():
                return
            time.sleep(0.1)
        raise AssertionError(f"private dockerd did not answer in {timeout}s: {self.tail()}")

    def answers(self) -> bool:
        import docker

        try:
            client = docker.DockerClient(base_url=self.host, timeout=5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop the engine (SIGTERM: it stops its containers and exits) and wait for it to go."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def tail(self) -> str:
        path = self.root / "dockerd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def destroy(self) -> None:
        """Remove everything it ran, stop it, and unmount what it mounted under its root."""
        if self.process is not None and self.process.poll() is None:
            import docker

            with contextlib.suppress(Exception):
                client = docker.DockerClient(base_url=self.host, timeout=30)
                for container in client.containers.list(all=True):
                    with contextlib.suppress(Exception):
                        container.remove(force=True, v=True)
                for network in client.networks.list():
                    if network.name not in ("bridge", "host", "none"):
                        with contextlib.suppress(Exception):
                            network.remove()
                client.close()
        self.stop()
        # its managed containerd is its child and exits with it; the data root stays mounted
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(self.root))), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        if Path(f"/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)


# --- a private PostgreSQL ----------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return require_binary(found[-1] if found else name, "a private PostgreSQL for the restart test")


class PrivatePostgres:
    """A PostgreSQL cluster of this test alone (initdb in a temporary dir owned by ``postgres``),
    on 127.0.0.1 and a random free port, trust authentication."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()

    def _as_postgres(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def init(self) -> None:
        initdb = postgres_bin("initdb")
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        done = self._as_postgres(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        assert done.returncode == 0, done.stderr
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                "fsync = off\nmax_connections = 50\n"
            )

    def start(self) -> None:
        done = self._as_postgres(
            postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
            "-o", f"-p {self.port}", "-w", "-t", "60", "start",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + self.tail()

    def stop(self, mode: str = "fast") -> None:
        done = self._as_postgres(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        assert done.returncode == 0, done.stdout + done.stderr

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def tail(self) -> str:
        path = self.root / "pg.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"


@contextlib.contextmanager
def private_postgres(root: Path) -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres(root)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        if cluster.running():
            cluster.stop("immediate")
