"""The outbound guard connects to the address it vetted: a name is resolved once per connection, so a
DNS server that answers differently the second time (DNS rebinding) cannot redirect the client,
while the Host header, TLS SNI and certificate verification keep the hostname of the URL.

Names are answered by a fake resolver; every server is on the loopback (127.0.0.1 allowed by the
policy, 127.0.0.2 not). Forbidden answers such as 169.254.169.254 are never connected to.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ctrlplane.network.acme import AcmeFailure, AcmeSession, new_account_key
from ctrlplane.outbound import BlockedDestination, OutboundPolicy, blocked_cause, fetch_json
from tests.certs import throwaway_ca

ALLOWED = ("127.0.0.1/32",)


class FakeResolver:
    """Answers each name from a script: one list of answers per lookup, the last one repeated."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        script = self.answers[host]
        return script[min(self.lookups.count(host), len(script)) - 1]


class Server:
    """A JSON server on one loopback address, counting requests and recording Host and SNI."""

    def __init__(self, address: str, port: int = 0, context: ssl.SSLContext | None = None) -> None:
        self.requests: list[str] = []
        self.server_names: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.headers.get("Host", ""))
                body = json.dumps({"keys": [], "served_by": address}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
        if context is not None:
            context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """An allowed server on 127.0.0.1 and a forbidden one on 127.0.0.2, on the same port."""
    allowed = Server("127.0.0.1")
    forbidden = Server("127.0.0.2", allowed.port)
    yield allowed, forbidden
    allowed.stop()
    forbidden.stop()


def test_a_name_resolving_to_a_forbidden_address_is_never_connected_to() -> None:
    resolver = FakeResolver({"metadata.test": [["169.254.169.254"]], "mixed.test": [["127.0.0.1", "10.0.0.7"]]})
    policy = OutboundPolicy(ALLOWED, resolver=resolver)
    for url in ("http://metadata.test/latest/meta-data/", "https://mixed.test/jwks.json"):
        with pytest.raises(BlockedDestination, match="CTRLPLANE_OUTBOUND_ALLOW_CIDRS"):
            fetch_json(policy, url, headers={}, timeout=2)
        with policy.session() as session, pytest.raises(requests.ConnectionError) as raised:
            session.get(url, timeout=2)
        assert blocked_cause(raised.value) is not None
    assert resolver.lookups == ["metadata.test", "metadata.test", "mixed.test", "mixed.test"]


def test_a_rebinding_name_cannot_move_the_connection_to_a_forbidden_address(servers: tuple[Server, Server]) -> None:
    allowed, forbidden = servers
    resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    policy = OutboundPolicy(ALLOWED, resolver=resolver)
    url = f"http://rebind.test:{allowed.port}/jwks.json"

    document = fetch_json(policy, url, headers={}, timeout=5)
    assert document["served_by"] == "127.0.0.1"
    assert resolver.lookups == ["rebind.test"], "one lookup per connection: the vetted answer is the one used"
    assert allowed.requests == [f"rebind.test:{allowed.port}"], "the Host header keeps the hostname"

    with pytest.raises(BlockedDestination, match=r"127\.0\.0\.2"):
        fetch_json(policy, url, headers={}, timeout=5)
    assert forbidden.requests == []
    assert len(allowed.requests) == 1


def test_without_the_pin_a_check_then_a_second_lookup_reaches_the_forbidden_server(
    servers: tuple[Server, Server],
) -> None:
    """The control case: checking first and letting the client resolve again (as the guard did
    before) reaches 127.0.0.2, so the test above would see it if the pin failed."""
    allowed, forbidden = servers
    resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    policy = OutboundPolicy(ALLOWED, resolver=resolver)
    policy.check(f"http://rebind.test:{allowed.port}/")
    second_answer = resolver("rebind.test", allowed.port)[0]
    response = requests.get(f"http://{second_answer}:{allowed.port}/", timeout=5)
    assert response.json()["served_by"] == "127.0.0.2"
    assert len(forbidden.requests) == 1


def _ca_and_leaf(tmp_path: Path, hostname: str) -> tuple[Path, ssl.SSLContext]:
    ca_path, cert_path, key_path = throwaway_ca(tmp_path, [hostname])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return ca_path, context


def test_tls_sends_sni_and_verifies_the_certificate_against_the_hostname(tmp_path: Path) -> None:
    ca, context = _ca_and_leaf(tmp_path, "jwks.test")
    server = Server("127.0.0.1", context=context)
    try:
        resolver = FakeResolver({"jwks.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        policy = OutboundPolicy(ALLOWED, resolver=resolver)
        with policy.session() as session:
            response = session.get(f"https://jwks.test:{server.port}/jwks.json", verify=str(ca), timeout=5)
            assert response.json()["served_by"] == "127.0.0.1"
            assert server.server_names == ["jwks.test"]
            assert server.requests == [f"jwks.test:{server.port}"]
            with pytest.raises(requests.exceptions.SSLError, match=r"other\.test"):
                session.get(f"https://other.test:{server.port}/jwks.json", verify=str(ca), timeout=5)
        assert server.server_names[-1] == "other.test"
        assert len(server.requests) == 1, "a certificate for another name is refused before any request"
    finally:
        server.stop()


def test_an_acme_directory_on_a_forbidden_address_is_refused() -> None:
    resolver = FakeResolver({"acme.test": [["169.254.169.254"]]})
    with pytest.raises(AcmeFailure, match="outbound policy"):
        AcmeSession(
            "https://acme.test/directory",
            new_account_key(),
            registration=None,
            ca_bundle=None,
            timeout=5,
            policy=OutboundPolicy(ALLOWED, resolver=resolver),
        )
    assert resolver.lookups == ["acme.test"]


def test_a_url_the_ca_hands_back_is_guarded_too(servers: tuple[Server, Server]) -> None:
    """The directory (served on an allowed address) names its nonce and account URLs on a forbidden
    one: the account request is refused before anything reaches that address."""
    allowed, forbidden = servers

    class Directory(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            elsewhere = f"http://127.0.0.2:{allowed.port}"
            body = json.dumps(
                {"newNonce": f"{elsewhere}/nonce", "newAccount": f"{elsewhere}/account", "newOrder": f"{elsewhere}/o"}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    directory = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Directory)
    threading.Thread(target=directory.serve_forever, daemon=True).start()
    try:
        resolver = FakeResolver({"acme.test": [["127.0.0.1"]], "127.0.0.2": [["127.0.0.2"]]})
        session = AcmeSession(
            f"http://acme.test:{directory.server_address[1]}/directory",
            new_account_key(),
            registration=None,
            ca_bundle=None,
            timeout=5,
            policy=OutboundPolicy(ALLOWED, resolver=resolver),
        )
        with pytest.raises(AcmeFailure, match="outbound policy"):
            session.register("ops@example.com")
    finally:
        directory.shutdown()
        directory.server_close()
    assert forbidden.requests == []
    assert "127.0.0.2" in resolver.lookups
