"""SIGKILL of the server while a webhook delivery is in flight: after a restart the message is
delivered (again, with the same webhook-id: at least once), and the endpoint's later messages
follow in order, none lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ctrlplane.settings import Settings
from tests.conftest import Tokens, bearer
from tests.harness import ServeProcess
from tests.webhooks.conftest import receiver  # noqa: F401 - fixture
from tests.webhooks.receiver import Receiver, verify

pytestmark = [pytest.mark.faults]


@pytest.fixture
def webhook_server(database_url: str, tmp_path: Path, settings: Settings) -> Iterator[ServeProcess]:
    process = ServeProcess(
        database_url,
        tmp_path / "server",
        settings.cluster_name,
        CTRLPLANE_PROVIDERS="docker",
        CTRLPLANE_OUTBOUND_ALLOW_CIDRS="127.0.0.0/8",
        CTRLPLANE_WEBHOOK_TIMEOUT_SECONDS="2",
        CTRLPLANE_WEBHOOK_RETRY_BASE_SECONDS="0.2",
    )
    try:
        yield process
    finally:
        process.stop()


async def test_a_delivery_cut_off_by_sigkill_is_delivered_after_restart(
    webhook_server: ServeProcess, receiver: Receiver, tokens: Tokens
) -> None:
    receiver.delay = 30.0  # the first request hangs: the kill lands while it is in flight
    await webhook_server.start()
    async with httpx.AsyncClient(base_url=webhook_server.url, timeout=30) as http:
        tenant = await http.post(
            "/v1/admin/tenants", json={"name": "Hooks", "slug": "hooks", "plan": "pro"}, headers=bearer(tokens.admin())
        )
        assert tenant.status_code == 201, tenant.text
        token = bearer(tokens.tenant(tenant.json()["id"]))
        hook = await http.post("/v1/webhooks", json={"url": receiver.url}, headers=token)
        assert hook.status_code == 201, hook.text
        secret, hook_id = hook.json()["secret"], hook.json()["id"]
        sent = []
        for _ in range(3):
            response = await http.post(f"/v1/webhooks/{hook_id}/test", headers=token)
            assert response.status_code == 201, response.text
            sent.append(response.json()["message_id"])

        deadline = time.monotonic() + 20
        while not receiver.received() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert receiver.received(), "the first delivery never reached the receiver"
        webhook_server.kill()
        receiver.delay = 0.0

        await webhook_server.start()
        http.base_url = httpx.URL(webhook_server.url)
        deadline = time.monotonic() + 60
        items: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            items = (await http.get(f"/v1/webhooks/{hook_id}/deliveries", headers=token)).json()["items"]
            if [d["state"] for d in items] == ["succeeded"] * 3:
                break
            await asyncio.sleep(0.1)
        assert [d["state"] for d in items] == ["succeeded"] * 3, (items, webhook_server.tail())

    received = receiver.received()
    ids = [r.headers["webhook-id"] for r in received]
    assert ids[0] == sent[0], "the request in flight at the kill was the first message"
    assert ids[1:] == sent, f"after the restart every message arrives once, in order: {ids}"
    for request in received:
        assert verify(secret, request.headers, request.body)["type"] == "webhook.test"
