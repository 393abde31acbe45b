"""The wake listener's plumbing without a database: the in-process announcement of a started
instance, and a shutdown with the router's kept-alive connections still open."""

from __future__ import annotations

import asyncio
from typing import Any

from ctrlplane.network.wake import WakeServer
from ctrlplane.settings import Settings
from ctrlplane.signals import Announcements, Signal


async def test_an_announcement_reaches_only_who_awaits_that_key_now() -> None:
    news: Announcements[str] = Announcements()
    news.announce("inst_a", "before anyone waits")
    with news.awaiting("inst_a") as first, news.awaiting("inst_a") as second, news.awaiting("inst_b") as other:
        assert not first.done()
        news.announce("inst_a", "started")
        assert first.result() == "started" and second.result() == "started"
        assert not other.done()
        news.announce("inst_a", "a later one")  # the first value stays
        assert first.result() == "started"
    assert other.cancelled()
    assert news._waiting == {}  # nothing is kept once the waiters are gone


async def test_closing_the_listener_ends_open_connections_without_an_error(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        listener = WakeServer(
            settings,
            db=None,  # type: ignore[arg-type]  # no request reaches the database here
            work=Signal(),
            events=Signal(),
            started=Announcements(),
            secret="s",
        )
        await listener.start()
        assert listener.address is not None
        host, _, port = listener.address.rpartition(":")
        # as Caddy keeps its connections to the listener open between requests
        idle = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
        await asyncio.sleep(0.05)
        await listener.close()
        for reader, writer in idle:
            assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the listener
            writer.close()
        await asyncio.sleep(0.05)
        assert errors == []
        assert listener.client is None
    finally:
        loop.set_exception_handler(None)
