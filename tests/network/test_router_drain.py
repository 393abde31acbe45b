"""Draining a replica out of rotation against a real Caddy: the router waits for the requests Caddy
still has in flight to it, and no longer than that.

Caddy forgets an upstream (and its request count) as soon as no loaded route names it, even with a
request still in flight to it, so the router keeps a withdrawn upstream in a route no request
reaches (``Router.hold``) and reads its count from ``/reverse_proxy/upstreams`` until it is zero
(``Router.drained``). The upstream here is a loopback server whose ``/slow`` answers only when the
test lets it, so the order of events, not a clock, says whether the drain waited."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import msgspec
import pytest

from ctrlplane.db import Database
from ctrlplane.network.caddy import CaddyAdmin, RouterState, Site, UpstreamTarget, caddy_config, encode
from ctrlplane.network.router import Router
from ctrlplane.settings import Settings
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.ports import free_port
from tests.waiting import eventually

HOST = "web.acme.localhost"
BOUND_SECONDS = 60.0
"""The drain's bound in these tests: far longer than any of them waits unless the drain is wrong."""


class SlowUpstream:
    """HTTP on loopback: ``/slow`` answers once ``release`` is set, anything else at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        release = self.release

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/slow":
                    release.wait(BOUND_SECONDS)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.dial = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[SlowUpstream]:
    server = SlowUpstream()
    yield server
    server.close()


def router_for(settings: Settings, db: Database, admin_address: str, **overrides: object) -> Router:
    return Router(
        msgspec.structs.replace(
            settings,
            router="caddy",
            router_admin_address=admin_address,
            **{"router_drain_seconds": BOUND_SECONDS, **overrides},
        ),
        db,
    )


def caddy_router(settings: Settings, db: Database, caddy: Caddy) -> Router:
    return router_for(
        settings,
        db,
        caddy.admin_address,
        router_http_listen=f"127.0.0.1:{caddy.http_port}",
        router_https_listen=f"127.0.0.1:{caddy.https_port}",
    )


async def serve_through(router: Router, dial: str) -> None:
    """Load a configuration in which ``HOST`` goes to ``dial`` (what the rotation was before the
    withdrawal; the database behind ``router`` is empty, like after it)."""
    site = Site(
        instance_id="ins_drain",
        hostnames=(HOST,),
        https_hostnames=(),
        ports=(8080,),
        routes=(),
        upstreams=(UpstreamTarget(container_port=8080, dial=dial),),
    )
    await router.admin.load(encode(caddy_config(RouterState(sites=(site,)), router.options)))


async def test_a_withdrawn_upstream_drains_until_its_request_in_flight_is_answered(
    settings: Settings, db: Database, caddy: Caddy, upstream: SlowUpstream
) -> None:
    router = caddy_router(settings, db, caddy)
    admin = router.admin
    await serve_through(router, upstream.dial)
    async with httpx.AsyncClient(base_url=caddy.http_url, timeout=BOUND_SECONDS) as client:
        in_flight = asyncio.create_task(client.get("/slow", headers={"Host": HOST}))
        await eventually(
            lambda: _count(admin, upstream.dial, 1), "the slow request in flight to the upstream, as Caddy counts"
        )
        router.hold({upstream.dial})
        assert await router.sync()  # the rotation without the upstream, which is held out of it
        draining = asyncio.create_task(router.drained({upstream.dial}))
        # Caddy still counts the request after the push that took its upstream out of rotation, and
        # the drain waits for it (it polls every 20 ms; give it many polls to get it wrong)
        await asyncio.sleep(0.5)
        assert (await admin.in_flight()).get(upstream.dial) == 1
        assert not draining.done() and not in_flight.done()
        # the request for the old rotation is answered by the held upstream, then the drain ends
        upstream.release.set()
        response = await in_flight
        await asyncio.wait_for(draining, timeout=BOUND_SECONDS / 2)
    assert (response.status_code, response.content) == (200, b"ok")
    # done draining, the router stops holding the upstream: the next push leaves it out
    assert await router.sync(force=True)
    assert upstream.dial not in await admin.in_flight()


async def test_a_withdrawn_upstream_with_nothing_in_flight_drains_without_waiting_the_bound(
    settings: Settings, db: Database, caddy: Caddy, upstream: SlowUpstream
) -> None:
    router = caddy_router(settings, db, caddy)
    await serve_through(router, upstream.dial)
    async with httpx.AsyncClient(base_url=caddy.http_url, timeout=5) as client:
        answered = await client.get("/", headers={"Host": HOST})
    assert answered.status_code == 200
    router.hold({upstream.dial})
    assert await router.sync()
    await asyncio.wait_for(router.drained({upstream.dial}), timeout=BOUND_SECONDS / 2)


async def test_a_router_that_cannot_be_asked_is_waited_for_the_whole_bound(settings: Settings, db: Database) -> None:
    """With Caddy's admin API unreachable nothing in flight can be counted, so the drain takes the
    bound (the behaviour of a fixed drain), never less."""
    bound = 0.5
    router = router_for(settings, db, f"127.0.0.1:{free_port()}", router_drain_seconds=bound)
    started = time.monotonic()  # before the hold, whose bound runs from the hold
    router.hold({"127.0.0.1:9"})
    await router.drained({"127.0.0.1:9"})
    assert time.monotonic() - started >= bound


async def _count(admin: CaddyAdmin, dial: str, wanted: int) -> bool:
    return (await admin.in_flight()).get(dial) == wanted
