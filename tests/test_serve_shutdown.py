"""``ctrlplane serve`` under its ASGI server (uvicorn with uvloop and httptools): SIGTERM stops
new connections, lets a request in flight finish, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec

from ctrlplane.settings import Settings
from tests.conftest import Tokens, bearer
from tests.harness import ServeProcess


async def test_sigterm_lets_a_request_in_flight_finish_then_exits_cleanly(
    database_url: str, tmp_path: Path, settings: Settings, tokens: Tokens
) -> None:
    server = ServeProcess(
        database_url, tmp_path / "server", settings.cluster_name, ready_path="/readyz", CTRLPLANE_PROVIDERS="docker"
    )
    await server.start()
    try:
        address = urlsplit(server.url)
        assert address.hostname is not None and address.port is not None
        body = msgspec.json.encode({"name": "Drain", "slug": "drain", "plan": "free"})
        head = (
            f"POST /v1/admin/tenants HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nAuthorization: {bearer(tokens.admin())['Authorization']}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        writer.write(head + body[:10])  # the server has the request and waits for the rest of its body
        await writer.drain()
        await asyncio.sleep(0.5)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        assert server.process.poll() is None, "the server exited with a request in flight"
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                await client.get(f"{server.url}/healthz")
                refused = False
            except httpx.TransportError:
                refused = True
        assert refused, "a new connection was served after SIGTERM"
        writer.write(body[10:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=20)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        assert b'"slug":"drain"' in answer
        returncode = await asyncio.to_thread(server.process.wait, 30)
        assert returncode == 0, server.tail()
        await server.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            tenants = await client.get("/v1/admin/tenants", headers=bearer(tokens.admin()))
        assert "drain" in [t["slug"] for t in tenants.json()["items"]]
    finally:
        server.stop()
