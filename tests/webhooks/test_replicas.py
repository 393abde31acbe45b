"""Several delivery loops at once (as on several replicas): every message is sent exactly once
when nothing fails, and each endpoint's messages arrive in order."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

from ctrlplane.webhooks.delivery import WebhookDispatcher
from tests.api.test_instances import tenant_token
from tests.conftest import Api
from tests.webhooks.receiver import Receiver, verify
from tests.webhooks.test_webhooks import create_webhook

ENDPOINTS = 3
MESSAGES = 12
LOOPS = 4


@pytest.mark.dialects  # claims with FOR UPDATE SKIP LOCKED on PostgreSQL
async def test_concurrent_loops_send_each_message_once_and_in_order_per_endpoint(
    api: Api, app: Any, receiver: Receiver
) -> None:
    _, token = await tenant_token(api)
    hooks = [await create_webhook(api, token, f"{receiver.url}/{n}") for n in range(ENDPOINTS)]
    queued: dict[str, list[str]] = defaultdict(list)
    for _ in range(MESSAGES):
        for hook in hooks:
            sent = await api.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)
            assert sent.status_code == 201, sent.text
            queued[hook["id"]].append(sent.json()["message_id"])

    services = app.state.services
    loops = [WebhookDispatcher(services) for _ in range(LOOPS)]
    assert len({loop.owner for loop in loops}) == LOOPS

    async def run(loop: WebhookDispatcher) -> None:
        idle = 0
        while idle < 3:
            idle = 0 if await loop.deliver_once() else idle + 1
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(*(run(loop) for loop in loops)), timeout=120)

    arrived: dict[str, list[str]] = defaultdict(list)
    for request in receiver.received():
        payload = verify(
            next(h["secret"] for h in hooks if h["id"] in request.body.decode()), request.headers, request.body
        )
        arrived[payload["data"]["webhook_id"]].append(request.headers["webhook-id"])
    assert dict(arrived) == dict(queued), "each message exactly once, in order per endpoint"
    for hook in hooks:
        items = (await api.client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=token)).json()
        assert items["total"] == MESSAGES and {d["state"] for d in items["items"]} == {"succeeded"}
