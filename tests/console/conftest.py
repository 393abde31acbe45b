"""The console in a real browser: Debian's chromium driven by Playwright, against ``ctrlplane serve``
on the real Docker engine. One server and one browser per module; each test a browser context of
its own (its own sessionStorage, so its own signed-in credential).

The server resolves domains' TXT records through a pebble-challtestsrv of the module's own (the
tests set the records the console shows), and its ACME directory is a loopback port where nothing
listens (a requested certificate fails there, and the page shows that state; nothing leaves the
machine). Usage is sampled every 2 s, so the metrics charts get new points while a test watches.

Screenshots go to ``$CTRLPLANE_TEST_ARTIFACTS/console`` (default ``tests/artifacts/console``,
gitignored). ``CTRLPLANE_TEST_README_SCREENSHOT=1`` also writes ``docs/console.png``, the README's.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker import DockerClient

from ctrlplane.auth.tokens import issue_token
from ctrlplane.settings import Settings
from tests.conftest import JWT_SECRET, require_binary
from tests.harness import ServeProcess
from tests.network.processes import ChallTestSrv
from tests.ports import free_port
from tests.providers.docker_engine import docker_engine, ensure_variant_images, remove_cluster  # noqa: F401
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CTRLPLANE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "console"
README_SCREENSHOT = ROOT / "docs" / "console.png"
CHROMIUM = "/usr/bin/chromium"


class Console:
    """The server under test, a way to mint credentials, and a browser to open pages in."""

    def __init__(self, server: ServeProcess, browser: Any, settings: Settings, dns: ChallTestSrv) -> None:
        self.server = server
        self.dns = dns
        self.browser = browser
        self.settings = settings
        self.http = httpx.Client(base_url=server.url, timeout=30)

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, *, tenant_id: str | None, roles: list[str], subject: str = "alice") -> str:
        return issue_token(self.settings, subject=subject, tenant_id=tenant_id, roles=roles, ttl=timedelta(hours=1))

    def admin(self) -> str:
        return self.token(tenant_id=None, roles=["admin"], subject="root")

    def call(self, method: str, path: str, credential: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers={"Authorization": f"Bearer {credential}"}, **kwargs)

    def create_tenant(self, slug: str) -> dict[str, Any]:
        response = self.call(
            "POST", "/v1/admin/tenants", self.admin(), json={"name": slug.title(), "slug": slug, "plan": "pro"}
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def create_key(self, tenant_id: str, roles: list[str], name: str) -> str:
        response = self.call(
            "POST", "/v1/keys", self.token(tenant_id=tenant_id, roles=["admin"]), json={"name": name, "roles": roles}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def open(
        self,
        credential: str,
        *,
        width: int = 1280,
        height: int = 860,
        before_sign_in: Callable[[Any], None] | None = None,
    ) -> Any:
        """A new browser context, signed in with ``credential`` through the sign-in form
        (``before_sign_in`` gets the page first, e.g. to hold some requests)."""
        context = self.browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(20_000)
        if before_sign_in is not None:
            before_sign_in(page)
        page.goto(f"{self.url}/console/")
        page.get_by_label("API key or token").fill(credential)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="Sign out").wait_for()
        return page


def screenshot(page: Any, name: str, *, readme: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if readme and os.environ.get("CTRLPLANE_TEST_README_SCREENSHOT") == "1":
        page.screenshot(path=str(README_SCREENSHOT))
    return path


def accessibility_problems(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']}: "
        + "; ".join(node["target"][0] for node in violation["nodes"][:5])
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, docker_engine: DockerClient) -> Iterator[Console]:
    chromium = require_binary(CHROMIUM, "the console's browser tests need Debian's chromium")
    from playwright.sync_api import sync_playwright

    ensure_variant_images(docker_engine)
    base = tmp_path_factory.mktemp("console")
    cluster = f"test-{uuid.uuid4().hex[:12]}"
    dns = ChallTestSrv(base / "dns")
    dns.start()
    server = ServeProcess(
        f"sqlite+aiosqlite:///{base / 'ctrlplane.db'}",
        base / "server",
        cluster,
        ready_path="/readyz",
        CTRLPLANE_PROVIDERS="docker",
        CTRLPLANE_ROUTER="none",
        CTRLPLANE_RATE_LIMITS_ENABLED="false",
        CTRLPLANE_DNS_RESOLVER=dns.dns_address,
        CTRLPLANE_ACME_DIRECTORY_URL=f"https://127.0.0.1:{free_port()}/dir",
        CTRLPLANE_METRICS_SAMPLE_SECONDS="2",
    )
    try:
        asyncio.run(server.start())
    except BaseException:
        dns.stop()
        raise
    settings = Settings(data_dir=str(base / "tokens"), jwt_secret=JWT_SECRET)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            console = Console(server, browser, settings, dns)
            try:
                yield console
            finally:
                console.http.close()
                browser.close()
    finally:
        server.stop()
        dns.stop()
        remove_cluster(docker_engine, cluster)


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``eventually`` for these synchronous tests. ``check`` asks the API, never the page: the sync
    Playwright API cannot run inside the event loop (the page waits with Playwright's ``expect``),
    and sync Playwright keeps a loop of its own in this thread, so the wait runs in another one."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, eventually(check, what, timeout=timeout)).result()
