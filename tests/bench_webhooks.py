"""``make bench``, webhooks: deliveries per second to a local receiver.

In one process: an app on a fresh SQLite database (``create_app``, background off), a tenant with
``CTRLPLANE_BENCH_WEBHOOK_ENDPOINTS`` = 4 endpoints on a loopback receiver that answers 204 at
once (tests/webhooks/receiver.py), and ``CTRLPLANE_BENCH_WEBHOOK_MESSAGES`` = 250 test messages
queued per endpoint through the API. Then ``CTRLPLANE_BENCH_WEBHOOK_WORKERS`` = 2 delivery loops
(``WebhookDispatcher``, as ``Background`` runs them) deliver everything; the rate is deliveries
over that wall time, each one a claim transaction, a signed POST and a result transaction.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from ctrlplane.app import create_app
from ctrlplane.auth.tokens import issue_token
from ctrlplane.db import connect, migrate
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from ctrlplane.webhooks.delivery import WebhookDispatcher
from ctrlplane.webhooks.models import WebhookDelivery
from tests.webhooks.receiver import Receiver, serve

ENDPOINTS = int(os.environ.get("CTRLPLANE_BENCH_WEBHOOK_ENDPOINTS", "4"))
MESSAGES = int(os.environ.get("CTRLPLANE_BENCH_WEBHOOK_MESSAGES", "250"))
WORKERS = int(os.environ.get("CTRLPLANE_BENCH_WEBHOOK_WORKERS", "2"))
HOUR = timedelta(hours=1)
JWT_SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"


async def _measure(data_dir: Path) -> dict[str, Any]:
    url = f"sqlite+aiosqlite:///{data_dir / 'ctrlplane.db'}"
    db = connect(url)
    await migrate(db)
    settings = Settings(
        data_dir=str(data_dir),
        database_url=url,
        jwt_secret=JWT_SECRET,
        providers=(),
        background=False,
        rate_limits_enabled=False,
        router="none",
        outbound_allow_cidrs=("127.0.0.0/8",),
    )
    receiver = Receiver(status=204)
    server = serve(receiver)
    app = create_app(settings, providers=ProviderRegistry([]), db=db)
    admin = {
        "Authorization": f"Bearer {issue_token(settings, subject='bench', tenant_id=None, roles=['admin'], ttl=HOUR)}"
    }
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            tenant = (await client.post("/v1/admin/tenants", json={"name": "B", "slug": "bench"}, headers=admin)).json()
            token = issue_token(settings, subject="bench", tenant_id=tenant["id"], roles=["admin"], ttl=HOUR)
            headers = {"Authorization": f"Bearer {token}"}
            hooks = [
                (await client.post("/v1/webhooks", json={"url": receiver.url}, headers=headers)).json()["id"]
                for _ in range(ENDPOINTS)
            ]
            for _ in range(MESSAGES):
                for hook in hooks:
                    assert (await client.post(f"/v1/webhooks/{hook}/test", headers=headers)).status_code == 201
        services = app.state.services
        total = ENDPOINTS * MESSAGES
        dispatchers = [WebhookDispatcher(services) for _ in range(WORKERS)]

        async def drain(dispatcher: WebhookDispatcher) -> None:
            while await dispatcher.deliver_once():
                pass

        started = time.perf_counter()
        await asyncio.gather(*(drain(d) for d in dispatchers))
        elapsed = time.perf_counter() - started
        async with db.read() as session:
            done = (
                await session.execute(
                    select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.state == "succeeded")
                )
            ).scalar_one()
        assert done == total == len(receiver.received()), (done, total, len(receiver.received()))
        return {
            "endpoints": ENDPOINTS,
            "deliveries": total,
            "workers": WORKERS,
            "seconds": round(elapsed, 3),
            "deliveries_per_s": round(total / elapsed, 1),
        }
    finally:
        server.shutdown()
        server.server_close()
        await db.dispose()


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ctrlplane-bench-webhooks-") as directory:
        result = asyncio.run(_measure(Path(directory)))
    print(
        f"webhooks: {result['deliveries']} deliveries to {result['endpoints']} endpoints on a local receiver, "
        f"{result['workers']} loops: {result['deliveries_per_s']:.0f}/s ({result['seconds']} s)"
    )
    return {"webhooks": result}


if __name__ == "__main__":
    run()
