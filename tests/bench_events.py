"""``make bench`` section ``events``: N concurrent SSE subscribers of one tenant (default 1,000,
``CTRLPLANE_BENCH_SSE_SUBSCRIBERS``) on one ``ctrlplane serve``-like server (the product's app and
uvicorn options, fake provider, SQLite, background loops off; tests/bench_api.py), all on
loopback. Each round creates an instance; the latency of a subscriber is from just before that
``POST`` was sent to the moment the subscriber read the instance's ``instance.created`` event
(so it includes the create's own request and commit). Reports p50/p99/max over subscribers and
rounds (target: p99 <= 1 s), the share of deliveries that arrived, and the server's resident
memory per idle subscriber (RSS with all subscribers connected and idle, minus before, over N).

The subscribers are raw asyncio connections (no HTTP client library), so the client side costs
as little as it can on the same machine. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.bench_api import JWT_SECRET, UNLIMITED, _bench_tenant, _free_port, _sqlite_database

SUBSCRIBERS = int(os.environ.get("CTRLPLANE_BENCH_SSE_SUBSCRIBERS", "1000"))
ROUNDS = int(os.environ.get("CTRLPLANE_BENCH_SSE_ROUNDS", "5"))
ROUND_TIMEOUT = 15.0
INSTANCE_ID = re.compile(rb'"instance_id":"([A-Za-z0-9_]+)"')


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Subscriber:
    def __init__(self) -> None:
        self.arrivals: dict[bytes, float] = {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, port: int, token: str, since: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        request = (
            f"GET /v1/events?since={since} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.writer.write(request.encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"subscribe failed: {head[:200]!r}")

    async def read(self) -> None:
        assert self.reader is not None
        while True:
            chunk = await self.reader.read(65536)
            if not chunk:
                return
            now = time.monotonic()
            for match in INSTANCE_ID.finditer(chunk):
                self.arrivals.setdefault(match.group(1), now)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _measure(base: str, port: int, token: str, pid: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
        warm = await api.post("/v1/instances", json={"name": "warm", "image": "bench/web:1"})
        warm.raise_for_status()
        since = (await api.get("/v1/events", params={"limit": 1})).json()["total"]
        await asyncio.sleep(1)
        before = _rss_kib(pid)
        subscribers = [Subscriber() for _ in range(SUBSCRIBERS)]
        connected = time.monotonic()
        for start in range(0, SUBSCRIBERS, 100):
            await asyncio.gather(*(s.connect(port, token, since) for s in subscribers[start : start + 100]))
        connect_s = time.monotonic() - connected
        readers = [asyncio.create_task(s.read()) for s in subscribers]
        await asyncio.sleep(3)
        idle = _rss_kib(pid)
        latencies: list[float] = []
        missing = 0
        try:
            for index in range(ROUNDS):
                sent = time.monotonic()
                created = await api.post("/v1/instances", json={"name": f"round-{index}", "image": "bench/web:1"})
                created.raise_for_status()
                instance_id = created.json()["id"].encode()
                deadline = time.monotonic() + ROUND_TIMEOUT
                while time.monotonic() < deadline and not all(instance_id in s.arrivals for s in subscribers):
                    await asyncio.sleep(0.01)
                arrived = [s.arrivals[instance_id] - sent for s in subscribers if instance_id in s.arrivals]
                latencies.extend(arrived)
                missing += SUBSCRIBERS - len(arrived)
                await asyncio.sleep(0.5)
        finally:
            for reader in readers:
                reader.cancel()
            for subscriber in subscribers:
                subscriber.close()
    return {
        "subscribers": SUBSCRIBERS,
        "rounds": ROUNDS,
        "connect_all_s": connect_s,
        "delivery_p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "delivery_p99_ms": _percentile(latencies, 0.99) * 1000 if latencies else None,
        "delivery_max_ms": max(latencies) * 1000 if latencies else None,
        "delivered": len(latencies),
        "missing": missing,
        "rss_before_mib": before / 1024,
        "rss_idle_mib": idle / 1024,
        "kib_per_idle_subscriber": (idle - before) / SUBSCRIBERS,
        "target": "p99 <= 1000 ms",
    }


def run() -> dict[str, Any]:
    with _sqlite_database() as url, tempfile.TemporaryDirectory() as data_dir:
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")},
            "CTRLPLANE_DATABASE_URL": url,
            "CTRLPLANE_DATA_DIR": data_dir,
            "CTRLPLANE_PORT": str(port),
            "CTRLPLANE_JWT_SECRET": JWT_SECRET,
            "CTRLPLANE_LOG_LEVEL": "warning",
            "CTRLPLANE_BACKGROUND": "false",
            "CTRLPLANE_PROVIDERS": "fake",
            "CTRLPLANE_BENCH_BODIES": data_dir,
            "CTRLPLANE_RATE_LIMITS": UNLIMITED,
        }
        server = subprocess.Popen([sys.executable, "-m", "tests.bench_api", "serve"], env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the bench server did not become ready")
                time.sleep(0.1)
            with _bench_tenant(base) as (_, _tenant_id, token):
                results = asyncio.run(_measure(base, port, token, server.pid))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"SSE fan-out, {results['subscribers']} subscribers x {results['rounds']} rounds: "
        f"p50 {results['delivery_p50_ms']:.0f} ms, p99 {results['delivery_p99_ms']:.0f} ms, "
        f"max {results['delivery_max_ms']:.0f} ms, missing {results['missing']}; "
        f"{results['kib_per_idle_subscriber']:.1f} KiB per idle subscriber"
    )
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
