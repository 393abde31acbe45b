"""ctrlplane's own HTTP clients share one TLS context (``ctrlplane/httpclients.py``): building one
with httpx's defaults loads a CA bundle, tens of milliseconds of CPU that every health probe,
router push and deploy gate paid. The guard below fails when code in ``ctrlplane/`` builds an
``httpx.AsyncClient`` itself, outside the few long-lived ones listed."""

from __future__ import annotations

import ast
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from ctrlplane import httpclients

ROOT = Path(__file__).resolve().parents[2] / "ctrlplane"
LONG_LIVED = {
    "httpclients.py": "the factory itself",
    "agent/client.py": "the node agent's one client for its whole run",
}


def built_clients(source: str) -> list[int]:
    """Lines of ``source`` that call ``httpx.AsyncClient(...)``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "AsyncClient"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "httpx"
    ]


def test_the_guard_sees_a_client_built_with_httpx() -> None:
    assert built_clients("import httpx\nasync def f():\n    async with httpx.AsyncClient() as c:\n        pass\n") == [
        3
    ]
    assert built_clients("from ctrlplane import httpclients\nc = httpclients.client()\n") == []


def test_ctrlplane_builds_its_http_clients_through_the_factory() -> None:
    found = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in ROOT.rglob("*.py")
        if str(path.relative_to(ROOT)) not in LONG_LIVED
        for line in built_clients(path.read_text())
    }
    assert found == set(), f"build these through ctrlplane.httpclients.client(): {sorted(found)}"


async def test_clients_share_one_tls_context_and_ignore_proxies_for_local_targets() -> None:
    local, remote = httpclients.client(), httpclients.client(local=False)
    async with local, remote:
        assert httpclients._tls() is httpclients._tls()
        assert local.trust_env is False and remote.trust_env is True


def test_a_plain_http_server_gets_a_context_that_trusts_nothing_and_https_the_defaults() -> None:
    plain = httpclients.verify_for("http://127.0.0.1:8080")
    assert isinstance(plain, ssl.SSLContext)
    # no CA loaded (that load is the cost), and still verifying: a TLS peer could not be trusted
    assert plain.cert_store_stats()["x509_ca"] == 0
    assert plain.verify_mode == ssl.CERT_REQUIRED and plain.check_hostname
    assert httpclients.verify_for("HTTPS://ctrlplane.example") is True


async def test_a_client_carries_no_cookie_from_one_answer_into_the_next_request() -> None:
    """The wake listener's one client proxies requests of every instance and user, all on 127.0.0.1
    (cookies ignore ports): a session cookie one app set must never ride along on the next request,
    to that app or another tenant's."""
    seen: list[str | None] = []

    class App(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            self.send_header("Set-Cookie", "session=USER_A; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    servers = [HTTPServer(("127.0.0.1", 0), App) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with httpclients.client(timeout=5) as http:
            for server in (*servers, *servers):
                response = await http.get(f"http://127.0.0.1:{server.server_address[1]}/login")
                assert response.status_code == 200
            assert len(http.cookies.jar) == 0
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert seen == [None] * 4
