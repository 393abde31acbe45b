"""Caddy, Pebble and pebble-challtestsrv for the network tests, each started on random loopback
ports in a directory of its own and stopped afterwards.

A missing binary skips the tests locally and fails them with ``CI`` set. Caddy is Debian's package
(2.6.2), the router that keeps every request across configuration loads; a test that needs Caddy's
``bytes_read`` (2.7 and later) asks for the one ``tools/caddy/build.sh`` (``make caddy``) builds
from the Go module proxy (``@pytest.mark.parametrize("caddy", ["built"], indirect=True)``;
``CTRLPLANE_TEST_CADDY`` names another binary): docs/network.md, "Which Caddy". Pebble is Debian's
package; ``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.certs import throwaway_ca
from tests.conftest import require_binary
from tests.ports import free_port, free_udp_port
from tests.waiting import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
CADDY_BUILD = ROOT / "tools" / "caddy" / "build.sh"


def caddy_binary(which: str = "debian") -> str:
    """Debian's ``caddy`` on PATH, or (``built``) ``CTRLPLANE_TEST_CADDY`` or the one
    ``tools/caddy/build.sh`` built (skips locally, fails in CI, naming the command, when missing)."""
    if which == "debian":
        return require_binary("caddy", "the router (Debian package caddy)")
    override = os.environ.get("CTRLPLANE_TEST_CADDY")
    if override:
        return require_binary(override, "Caddy 2.7 or later (CTRLPLANE_TEST_CADDY)")
    directory = subprocess.run(
        ["bash", str(CADDY_BUILD), "--print-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return require_binary(str(Path(directory) / "caddy"), "Caddy 2.7 or later (build it: make caddy)")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_until(check: object, what: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(Exception):
            return bool(check())  # type: ignore[operator]
        return False

    eventually_sync(up, lambda: f"{what} did not come up: {log.read_text()[-2000:]}", timeout=timeout)


@dataclass
class Caddy:
    directory: Path
    admin_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    which: str = "debian"
    """``debian`` or ``built`` (``caddy_binary``)"""
    process: subprocess.Popen[bytes] | None = None

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        """Start with an empty configuration (only the admin endpoint)."""
        binary = caddy_binary(self.which)
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "empty.json"
        config.write_text(json.dumps({"admin": {"listen": self.admin_address, "config": {"persist": False}}}))
        log = self.directory / "caddy.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "XDG_DATA_HOME": str(self.directory / "data"),
            "XDG_CONFIG_HOME": str(self.directory / "config"),
        }
        self.process = subprocess.Popen(
            [binary, "run", "--config", str(config)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.directory,
        )
        _wait_until(
            lambda: httpx.get(f"http://{self.admin_address}/config/", timeout=1).status_code == 200,
            "caddy",
            self.process,
            log,
        )

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def restart_empty(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def caddy(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Caddy]:
    """Debian's Caddy; ``built`` as an indirect parameter: the one ``make caddy`` builds."""
    server = Caddy(tmp_path / "caddy", which=getattr(request, "param", "debian"))
    server.start()
    yield server
    server.stop()


@dataclass
class ChallTestSrv:
    """pebble-challtestsrv: a DNS server answering what its management API is told."""

    directory: Path
    dns_port: int = field(default_factory=free_udp_port)
    management_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def dns_address(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def start(self) -> None:
        binary = require_binary("pebble-challtestsrv", "the test DNS server (Debian package pebble)")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "challtestsrv.log"
        self.process = subprocess.Popen(
            [
                binary,
                "-dns01",
                self.dns_address,
                "-management",
                f"127.0.0.1:{self.management_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        _wait_until(
            lambda: httpx.post(self._url("/clear-txt"), json={"host": "probe."}, timeout=1).status_code == 200,
            "pebble-challtestsrv",
            self.process,
            log,
        )

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.management_port}{path}"

    def set_txt(self, name: str, value: str) -> None:
        response = httpx.post(self._url("/set-txt"), json={"host": name.rstrip(".") + ".", "value": value}, timeout=5)
        assert response.status_code == 200, response.text

    def clear_txt(self, name: str) -> None:
        response = httpx.post(self._url("/clear-txt"), json={"host": name.rstrip(".") + "."}, timeout=5)
        assert response.status_code == 200, response.text

    def set_a(self, name: str, address: str) -> None:
        response = httpx.post(
            self._url("/add-a"), json={"host": name.rstrip(".") + ".", "addresses": [address]}, timeout=5
        )
        assert response.status_code == 200, response.text

    def clear_a(self, name: str) -> None:
        response = httpx.post(self._url("/clear-a"), json={"host": name.rstrip(".") + "."}, timeout=5)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        _stop(self.process)
        self.process = None


@pytest.fixture
def challtestsrv(tmp_path: Path) -> Iterator[ChallTestSrv]:
    server = ChallTestSrv(tmp_path / "challtestsrv")
    server.start()
    yield server
    server.stop()


def _test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1/localhost, for Pebble's own HTTPS listeners."""
    return throwaway_ca(directory, ["localhost"], ["127.0.0.1"])


@dataclass
class Pebble:
    """Pebble, an ACME test CA, validating HTTP-01 challenges on ``http_port`` (Caddy's) and resolving
    names through pebble-challtestsrv."""

    directory: Path
    dns_address: str
    http_port: int
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    ca_bundle: Path | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> None:
        binary = require_binary("pebble", "the ACME test CA (Debian package pebble)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_bundle, cert, key = _test_ca(self.directory)
        config = self.directory / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management_port}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": self.http_port,
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        log = self.directory / "pebble.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        self.process = subprocess.Popen(
            [binary, "-config", str(config), "-dnsserver", self.dns_address],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.directory,
        )
        _wait_until(
            lambda: httpx.get(self.directory_url, verify=self._ssl(), timeout=1).status_code == 200,
            "pebble",
            self.process,
            log,
        )

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def root_pem(self) -> str:
        response = httpx.get(f"https://127.0.0.1:{self.management_port}/roots/0", verify=self._ssl(), timeout=5)
        assert response.status_code == 200, response.text
        return response.text

    def stop(self) -> None:
        _stop(self.process)
        self.process = None
