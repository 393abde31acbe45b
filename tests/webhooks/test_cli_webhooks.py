"""``ctrlplane webhooks ls|test-send`` and ``ctrlplane metrics`` against a live server."""

from __future__ import annotations

import json

from tests.api.test_cli_pipeline import cli
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.conftest import Api
from tests.webhooks.receiver import Receiver, verify
from tests.webhooks.test_webhooks import create_webhook


async def test_webhooks_ls_and_test_send_wait_for_the_receiver(live: Api, live_server: str, receiver: Receiver) -> None:
    tenant_id, token = await tenant_token(live)
    key = (await live.create_key(tenant_id, ["deploy"]))["key"]
    hook = await create_webhook(live, token, receiver.url, event_types=["deploy.*"])
    listed = await cli(live_server, key, "webhooks", "ls")
    assert listed.returncode == 0, listed.stderr
    assert hook["id"] in listed.stdout and "active" in listed.stdout and "deploy.*" in listed.stdout

    sent = await cli(live_server, key, "webhooks", "test-send", hook["id"], "--wait", "--json")
    assert sent.returncode == 0, sent.stderr
    delivery = json.loads(sent.stdout.splitlines()[-1])["delivery"]
    assert delivery["state"] == "succeeded" and delivery["response_status"] == 200
    [received] = receiver.received()
    assert received.headers["webhook-id"] == delivery["message_id"]
    assert verify(hook["secret"], received.headers, received.body)["type"] == "webhook.test"

    receiver.status = 500
    failed = await cli(live_server, key, "webhooks", "test-send", hook["id"], "--wait", "--timeout", "20s")
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "failed" in failed.stdout and "500" in failed.stdout
    missing = await cli(live_server, key, "webhooks", "test-send", "whk_unknown")
    assert missing.returncode == 7 and "404" in missing.stderr


async def test_metrics_prints_an_instances_series(live: Api, live_server: str) -> None:
    tenant_id, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    key = (await live.create_key(tenant_id, ["read"]))["key"]
    shown = await cli(live_server, key, "metrics", "web", "--name", "cpu_percent")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("cpu_percent (")
    refused = await cli(live_server, key, "metrics", "web", "--name", "no_such_metric")
    assert refused.returncode == 7 and "400" in refused.stderr
