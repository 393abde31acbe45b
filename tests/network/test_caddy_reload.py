"""Caddy's configuration loads and the connections clients open meanwhile.

Every push of a new configuration (each change of a deploy's rotation is one) makes Caddy bind a
new listening socket (``SO_REUSEPORT``) and close the old one; a connection the kernel had queued
on the old socket is reset, unless ``net.ipv4.tcp_migrate_req=1`` hands it to the new socket
(docs/network.md). The router warns when the host it shares with Caddy lacks that setting."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from ctrlplane.network.caddy import CaddyAdmin, Challenge, RouterOptions, RouterState, caddy_config, encode
from ctrlplane.network.router import config_loads_reset_connections
from tests.conftest import IN_CI
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture

LOADS = 120
CLIENTS = 4
HOST = "web.acme.localhost"


async def test_a_config_load_resets_no_client_connection(caddy: Caddy) -> None:
    """Clients open a new connection per request (as the deploy tests' client does) while the router
    pushes ``LOADS`` configurations; each push is a whole reload. On a host where the kernel resets
    the old socket's queue this fails within a few dozen loads (measured: 8 to 28 resets in ~120
    loads with migration off, none with it on). A host without the setting skips it locally with
    the command that sets it, and fails it in CI (``.ci/run`` sets it)."""
    unsafe = config_loads_reset_connections(caddy.admin_address)
    if unsafe is not None:
        message = f"{unsafe}: run `sysctl -w net.ipv4.tcp_migrate_req=1` (as root; .ci/run does)"
        if IN_CI:
            pytest.fail(f"CI requires {message}", pytrace=False)
        pytest.skip(message)
    admin = CaddyAdmin(caddy.admin_address)
    options = RouterOptions(
        admin_address=caddy.admin_address,
        http_listen=f"127.0.0.1:{caddy.http_port}",
        https_listen=f"127.0.0.1:{caddy.https_port}",
    )
    served = Challenge(HOST, "served", "validation")

    def config(n: int) -> bytes:
        changing = Challenge(HOST, f"token-{n}", "other")
        return encode(caddy_config(RouterState(challenges=(served, changing)), options))

    await admin.load(config(0))
    stop = asyncio.Event()
    answers: Counter[tuple[int, bytes]] = Counter()
    failures: list[str] = []

    async def client() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=caddy.http_url, timeout=10, limits=limits) as http:
            while not stop.is_set():
                try:
                    response = await http.get("/.well-known/acme-challenge/served", headers={"Host": HOST})
                except httpx.TransportError as exc:
                    failures.append(f"{type(exc).__name__}: {exc!r}")
                else:
                    answers[(response.status_code, response.content)] += 1
                await asyncio.sleep(0.005)

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    for n in range(1, LOADS + 1):
        await admin.load(config(n))
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*clients)

    total = len(failures) + sum(answers.values())
    assert failures == [], f"{len(failures)} of {total} requests failed across {LOADS} loads: {failures[:3]}"
    assert set(answers) == {(200, b"validation")}, answers
    assert total > LOADS


@pytest.fixture
def linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ctrlplane.network.router.sys.platform", "linux")


LOCAL = ["localhost:2019", "127.0.0.1:2019", "[::1]:2019", "http://127.0.0.2:2019", "unix//run/caddy.sock"]


@pytest.mark.parametrize("admin", LOCAL)
def test_a_host_that_resets_queued_connections_is_named_when_caddy_is_local(
    linux: None, tmp_path: Path, admin: str
) -> None:
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("0\n")
    reason = config_loads_reset_connections(admin, sysctl)
    assert reason is not None and "net.ipv4.tcp_migrate_req is 0" in reason
    sysctl.write_text("1\n")
    assert config_loads_reset_connections(admin, sysctl) is None


def test_a_kernel_without_the_setting_is_named(linux: None, tmp_path: Path) -> None:
    reason = config_loads_reset_connections("localhost:2019", tmp_path / "absent")
    assert reason is not None and "no net.ipv4.tcp_migrate_req" in reason


@pytest.mark.parametrize("admin", ["caddy.internal:2019", "10.0.0.5:2019", "http://router:2019"])
def test_a_remote_caddy_is_not_judged_by_this_host(linux: None, tmp_path: Path, admin: str) -> None:
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("0\n")
    assert config_loads_reset_connections(admin, sysctl) is None
