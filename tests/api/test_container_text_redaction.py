"""Text a runtime reports about an instance (its errors, replica failures: they may echo what a
container printed) is stored and shown only after its secret values and OTLP token, exact and in
base64, are redacted (issue 16, item 6); a run's output is shown to the deploy role only."""

from __future__ import annotations

import base64

from ctrlplane.provisioning.errors import ProviderUnavailable
from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import instance_token
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.api.test_secrets import put_secret
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider

SECRET = "sv-4f1d2a9c-printed-by-the-app"


async def test_a_runtime_error_echoing_a_secret_and_the_otlp_token_is_stored_redacted(
    live: Api, fake: FakeProvider, settings: Settings
) -> None:
    tenant_id, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    await put_secret(live, token, instance["id"], "DB_PASSWORD", SECRET)
    otlp = instance_token(settings, instance["id"])
    encoded = base64.b64encode(SECRET.encode()).decode()
    fake.fail_next("restart", ProviderUnavailable(f"the app printed {SECRET} / {encoded} / Bearer {otlp}"))
    restarted = await live.client.post(f"/v1/instances/{instance['id']}/restart", headers=token)
    assert restarted.status_code == 202, restarted.text
    waiting = await wait_for(live, instance["id"], token, lambda b: "waiting for the provider" in b["status_message"])
    message = waiting["status_message"]
    assert "the app printed [redacted] / [redacted] / Bearer [redacted]" in message, message
    reader = bearer(live.tokens.tenant(tenant_id, roles=["read"]))
    shown = await live.client.get(f"/v1/instances/{instance['id']}", headers=reader)
    for leaked in (SECRET, encoded, otlp):
        assert leaked not in shown.text and leaked not in message
