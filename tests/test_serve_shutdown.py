"""``ctrlplane serve`` under its ASGI server (uvicorn with httptools): SIGTERM stops
new connections, lets a request in flight finish, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from ctrlplane.settings import Settings
from tests.conftest import Tokens, bearer
from tests.harness import SERVING, ServeProcess


# Slow by design: two lifetimes of a real `ctrlplane serve` around a SIGTERM with a request in flight.
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


# Slow by design: a real multi-process `ctrlplane serve --workers` started and drained with SIGTERM.
@pytest.mark.dialects("--workers needs PostgreSQL (processes share the database); SQLite refuses it")
async def test_workers_serve_one_port_on_postgresql_and_are_refused_on_sqlite(
    database_url: str, tmp_path: Path, settings: Settings, tokens: Tokens
) -> None:
    server = ServeProcess(
        database_url, tmp_path / "server", settings.cluster_name, ready_path="/readyz", CTRLPLANE_PROVIDERS="docker"
    )
    command = [sys.executable, "-m", "ctrlplane.cli", "serve", "--workers", "2"]
    if database_url.startswith("sqlite"):
        refused = subprocess.run(command, env=server.env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2
        assert "needs PostgreSQL" in refused.stderr
        return
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=server.env, stdout=out, stderr=out)
    try:
        url = None
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(600):
                if url is None and (found := SERVING.search(log.read_bytes())):
                    url = found.group(1).decode()
                if url is not None:
                    try:
                        if (await client.get(f"{url}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                await asyncio.sleep(0.1)
            assert url is not None, log.read_text()
            admin = bearer(tokens.admin())
            created = await client.post(
                f"{url}/v1/admin/tenants", json={"name": "W", "slug": "workers", "plan": "free"}, headers=admin
            )
            assert created.status_code == 201, created.text
            answers = await asyncio.gather(*(client.get(f"{url}/v1/admin/tenants", headers=admin) for _ in range(10)))
            assert all(a.status_code == 200 and "workers" in a.text for a in answers)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
