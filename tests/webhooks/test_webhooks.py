"""Signed webhooks through the API and the background's delivery loop, to a receiver on loopback
that verifies every delivery with its own Standard Webhooks verifier (``receiver.verify``)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from ctrlplane.webhooks.delivery import WebhookDispatcher
from tests import waiting
from tests.api.test_instances import create, tenant_token
from tests.conftest import Api
from tests.webhooks.receiver import Receiver, VerificationError, verify

T = TypeVar("T")


# The suite's one polling helper, with this module's longer wait (real engines, real HTTP).
eventually = partial(waiting.eventually, timeout=20)


async def create_webhook(api: Api, token: dict[str, str], url: str, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/v1/webhooks", json={"url": url, **body}, headers=token)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def deliveries(api: Api, token: dict[str, str], webhook_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=token)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


@pytest.mark.dialects  # claims with FOR UPDATE SKIP LOCKED on PostgreSQL
async def test_a_receiver_gets_signed_deliveries_of_the_events_it_wants_in_order(live: Api, receiver: Receiver) -> None:
    _, token = await tenant_token(live)
    hook = await create_webhook(live, token, receiver.url, event_types=["instance.*"])
    assert hook["secret"].startswith("whsec_") and hook["status"] == "active"
    unwanted = await create_webhook(live, token, receiver.url + "/deploys", event_types=["deploy.*"])
    instance = await create(live, token)

    async def instance_events() -> list[dict[str, Any]] | None:
        items = (await live.client.get("/v1/events", params={"limit": 100}, headers=token)).json()["items"]
        wanted = [e for e in items if e["type"].startswith("instance.")]
        running = any(e["data"].get("to") == "running" for e in wanted)
        return wanted if running and len(receiver.received()) >= len(wanted) else None

    events = await eventually(instance_events, what="the instance's events delivered")
    received = receiver.received()
    payloads = [verify(hook["secret"], r.headers, r.body) for r in received]
    assert [r.headers["webhook-id"] for r in received] == [e["event_id"] for e in events]
    assert [p["type"] for p in payloads] == [e["type"] for e in events]
    assert [p["data"]["seq"] for p in payloads] == sorted(p["data"]["seq"] for p in payloads)
    assert all(p["data"]["instance_id"] == instance["id"] for p in payloads)
    assert all(r.headers["content-type"] == "application/json" for r in received)
    assert not any(r.headers.get("webhook-signature", "").count(" ") for r in received), "one secret, one signature"
    with pytest.raises(VerificationError):
        verify(unwanted["secret"], received[0].headers, received[0].body)

    async def recorded() -> list[dict[str, Any]] | None:
        # the receiver has answered; the result's transaction may commit a moment later
        found = await deliveries(live, token, hook["id"])
        return found if {d["state"] for d in found} == {"succeeded"} else None

    listed = await eventually(recorded, what="every delivery recorded as succeeded")
    assert len(listed) == len(events)
    assert all(d["attempts"] == 1 and d["response_status"] == 200 and d["latency_ms"] >= 0 for d in listed)
    assert await deliveries(live, token, unwanted["id"]) == []


@pytest.mark.dialects  # claims with FOR UPDATE SKIP LOCKED on PostgreSQL
async def test_a_failing_receiver_gets_retries_with_backoff_then_a_redelivery_works(
    live: Api, receiver: Receiver
) -> None:
    _, token = await tenant_token(live)
    hook = await create_webhook(live, token, receiver.url)
    receiver.status = 500
    sent = await live.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)
    assert sent.status_code == 201, sent.text
    delivery_id = sent.json()["id"]
    url = f"/v1/webhooks/{hook['id']}/deliveries/{delivery_id}"

    async def failed() -> dict[str, Any] | None:
        found = (await live.client.get(url, headers=token)).json()
        return found if found["state"] == "failed" else None

    delivery = await eventually(failed, timeout=30, what="the delivery to fail after its retry period")
    attempts = receiver.received()
    assert delivery["attempts"] == len(attempts) >= 3
    assert {a["response_status"] for a in delivery["attempt_log"]} == {500}
    assert {r.headers["webhook-id"] for r in attempts} == {delivery["message_id"]}
    for attempt in attempts:
        verify(hook["secret"], attempt.headers, attempt.body)
    # Each wait is at least half its exponential step (the jitter's floor): 0.1 s, 0.2 s, 0.4 s,
    # then 0.5 s (the cap, 1 s, halved). Waits can only be longer under load, never shorter, so
    # this is what a timing test can hold; tests/unit/test_webhooks.py checks the schedule itself.
    settings = live.tokens.settings
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    floors = [
        0.5 * min(settings.webhook_retry_max_seconds, settings.webhook_retry_base_seconds * 2**n)
        for n in range(len(gaps))
    ]
    assert all(gap >= floor - 0.02 for gap, floor in zip(gaps, floors, strict=True)), (gaps, floors)
    assert sum(floors) <= settings.webhook_retry_period_seconds + 1, "retried after its period"

    webhook = (await live.client.get(f"/v1/webhooks/{hook['id']}", headers=token)).json()
    assert webhook["status"] == "failing" and webhook["failing_since"]
    events = (await live.client.get("/v1/events", headers=token)).json()["items"]
    failing = [e for e in events if e["type"] == "webhook.failing"]
    assert [e["data"]["delivery_id"] for e in failing] == [delivery_id]

    async def failing_queued() -> bool:
        return any(d["event_type"] == "webhook.failing" for d in await deliveries(live, token, hook["id"]))

    # The endpoint wants every event, its own webhook.failing too: once that is queued, a failing
    # endpoint holds its later messages back (in order) instead of losing them.
    await eventually(failing_queued, what="the webhook.failing event queued for the endpoint")
    later = (await live.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)).json()
    await asyncio.sleep(1.0)
    assert len(receiver.received()) == len(attempts)

    receiver.status = 204
    again = await live.client.post(f"{url}/redeliver", headers=token)
    assert again.status_code == 201, again.text
    assert again.json()["state"] == "pending"

    async def both_delivered() -> list[dict[str, Any]] | None:
        items = await deliveries(live, token, hook["id"])
        return items if {d["state"] for d in items} == {"succeeded"} else None

    await eventually(both_delivered, what="the redelivery and the held-back message")
    tail = receiver.received()[len(attempts) :]
    # The endpoint wants every event, so its own webhook.failing event waited in line too.
    expected = [delivery["message_id"], failing[0]["event_id"], later["message_id"]]
    assert [r.headers["webhook-id"] for r in tail] == expected
    types = [verify(hook["secret"], request.headers, request.body)["type"] for request in tail]
    assert types == ["webhook.test", "webhook.failing", "webhook.test"]
    assert (await live.client.get(f"/v1/webhooks/{hook['id']}", headers=token)).json()["status"] == "active"


@pytest.mark.dialects  # claims with FOR UPDATE SKIP LOCKED on PostgreSQL
async def test_a_rotated_secret_signs_beside_the_previous_one_during_the_overlap(live: Api, receiver: Receiver) -> None:
    _, token = await tenant_token(live)
    hook = await create_webhook(live, token, receiver.url)
    rotated = await live.client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json={"overlap": "1h"}, headers=token)
    assert rotated.status_code == 201, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != hook["secret"] and rotated.json()["previous_secret_expires_at"]
    await live.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)
    first = (await eventually(lambda: _received(receiver, 1), what="the first test message"))[0]
    assert first.headers["webhook-signature"].count("v1,") == 2
    verify(new_secret, first.headers, first.body)
    verify(hook["secret"], first.headers, first.body)

    ended = await live.client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json={"overlap": "0s"}, headers=token)
    assert ended.status_code == 201 and ended.json()["previous_secret_expires_at"] is None
    await live.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)
    second = (await eventually(lambda: _received(receiver, 2), what="the second test message"))[1]
    verify(ended.json()["secret"], second.headers, second.body)
    for stale in (hook["secret"], new_secret):
        with pytest.raises(VerificationError):
            verify(stale, second.headers, second.body)


async def _received(receiver: Receiver, count: int) -> list[Any] | None:
    found = receiver.received()
    return found if len(found) >= count else None


async def test_create_read_update_delete_a_webhook(api: Api) -> None:
    _, token = await tenant_token(api)
    hook = await create_webhook(
        api, token, "https://hooks.example.invalid/ctrlplane?token=s3", event_types=["deploy.*"]
    )
    assert hook["event_types"] == ["deploy.*"] and hook["enabled"] is True
    shown = (await api.client.get(f"/v1/webhooks/{hook['id']}", headers=token)).json()
    assert "secret" not in shown and shown["url"] == hook["url"]
    patched = await api.client.patch(
        f"/v1/webhooks/{hook['id']}", json={"enabled": False, "event_types": ["*"]}, headers=token
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["enabled"] is False and patched.json()["event_types"] == ["*"]
    listed = (await api.client.get("/v1/webhooks", headers=token)).json()
    assert [w["id"] for w in listed["items"]] == [hook["id"]]
    audit = (await api.client.get("/v1/admin/audit", headers=api.admin_headers)).json()["items"]
    assert {"create", "update"} <= {e["action"] for e in audit if e["resource"] == "webhook"}
    assert "token=" not in str(audit), "a receiver's token in the query string stays out of the audit log"
    assert (await api.client.delete(f"/v1/webhooks/{hook['id']}", headers=token)).status_code == 204
    assert (await api.client.get(f"/v1/webhooks/{hook['id']}", headers=token)).status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://192.168.1.1/hook",
        "ftp://hooks.example.com/x",
        "https://user:pw@hooks.example.com/x",
        "not a url",
    ],
)
async def test_a_webhook_url_on_a_refused_address_is_400_and_changes_nothing(api: Api, url: str) -> None:
    _, token = await tenant_token(api)
    refused = await api.client.post("/v1/webhooks", json={"url": url}, headers=token)
    assert refused.status_code == 400, refused.text
    assert {"message", "code", "request_id"} <= set(refused.json())
    hook = await create_webhook(api, token, "https://hooks.example.invalid/x")
    patched = await api.client.patch(f"/v1/webhooks/{hook['id']}", json={"url": url}, headers=token)
    assert patched.status_code == 400
    assert (await api.client.get("/v1/webhooks", headers=token)).json()["total"] == 1
    assert (await api.client.get(f"/v1/webhooks/{hook['id']}", headers=token)).json()["url"] == hook["url"]


@pytest.mark.parametrize("body", [{"event_types": ["deploy*"]}, {"event_types": []}, {"overlap": 1}, {"colour": 1}])
async def test_invalid_webhook_bodies_are_400(api: Api, body: dict[str, Any]) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post("/v1/webhooks", json={"url": "https://h.example.invalid/", **body}, headers=token)
    assert response.status_code == 400, response.text


async def test_other_tenant_gets_404_for_webhooks_and_deliveries(api: Api) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    hook = await create_webhook(api, token, "https://hooks.example.invalid/x")
    delivery = (await api.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)).json()
    base = f"/v1/webhooks/{hook['id']}"
    calls = [
        ("GET", base, None),
        ("PATCH", base, {"enabled": False}),
        ("POST", f"{base}/rotate-secret", {}),
        ("POST", f"{base}/test", None),
        ("GET", f"{base}/deliveries", None),
        ("GET", f"{base}/deliveries/{delivery['id']}", None),
        ("POST", f"{base}/deliveries/{delivery['id']}/redeliver", None),
        ("DELETE", base, None),
    ]
    for method, path, body in calls:
        response = await api.client.request(method, path, json=body, headers=other)
        assert response.status_code == 404, f"{method} {path}: {response.status_code} {response.text}"
        assert response.json()["code"] == "not_found"
    assert (await api.client.get("/v1/webhooks", headers=other)).json()["total"] == 0
    assert (await api.client.get(base, headers=token)).json()["enabled"] is True
    assert len(await deliveries(api, token, hook["id"])) == 1
    redeliver = await api.client.post(f"{base}/deliveries/{delivery['id']}/redeliver", headers=token)
    assert redeliver.status_code == 201 and redeliver.json()["state"] == "pending"


async def test_a_system_admin_creates_a_webhook_for_a_named_tenant(api: Api) -> None:
    tenant_id, token = await tenant_token(api)
    created = await api.client.post(
        "/v1/webhooks", json={"url": "https://h.example.invalid/", "tenant_id": tenant_id}, headers=api.admin_headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["tenant_id"] == tenant_id
    assert (await api.client.get("/v1/webhooks", headers=token)).json()["total"] == 1
    unnamed = await api.client.post(
        "/v1/webhooks", json={"url": "https://h.example.invalid/"}, headers=api.admin_headers
    )
    assert unnamed.status_code == 400


async def test_finished_deliveries_past_their_retention_are_pruned(api: Api, app: Any, db: Any) -> None:
    _, token = await tenant_token(api)
    hook = await create_webhook(api, token, "https://hooks.example.invalid/x")
    old, fresh, queued = [
        (await api.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)).json()["id"] for _ in range(3)
    ]
    async with db.write() as session, session.begin():
        await session.execute(
            text("UPDATE webhook_deliveries SET state = 'succeeded', created_at = :at WHERE id IN (:a, :b)"),
            {"at": datetime.now(UTC) - timedelta(days=31), "a": old, "b": queued},
        )
        await session.execute(text("UPDATE webhook_deliveries SET state = 'pending' WHERE id = :b"), {"b": queued})
        await session.execute(text("UPDATE webhook_deliveries SET state = 'failed' WHERE id = :c"), {"c": fresh})
    assert await WebhookDispatcher(app.state.services).prune() == 1
    left = {d["id"] for d in await deliveries(api, token, hook["id"])}
    assert left == {fresh, queued}, "only finished deliveries past the retention go"


async def test_a_tenant_has_at_most_50_webhook_endpoints(api: Api) -> None:
    _, token = await tenant_token(api)
    for n in range(50):
        await create_webhook(api, token, f"https://hooks.example.invalid/{n}")
    refused = await api.client.post("/v1/webhooks", json={"url": "https://hooks.example.invalid/x"}, headers=token)
    assert refused.status_code == 409 and "at most 50" in refused.json()["message"]


@pytest.mark.dialects  # claims with FOR UPDATE SKIP LOCKED on PostgreSQL
async def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt(live: Api, receiver: Receiver) -> None:
    _, token = await tenant_token(live)
    hook = await create_webhook(live, token, receiver.url)
    receiver.delay = live.tokens.settings.webhook_timeout_seconds + 1.5
    sent = (await live.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)).json()
    url = f"/v1/webhooks/{hook['id']}/deliveries/{sent['id']}"

    async def failed() -> dict[str, Any] | None:
        found = (await live.client.get(url, headers=token)).json()
        return found if found["state"] == "failed" else None

    delivery = await eventually(failed, timeout=30, what="the timed-out delivery to fail")
    first = delivery["attempt_log"][0]
    assert first["response_status"] is None and "Timeout" in first["error"]
    assert first["latency_ms"] >= live.tokens.settings.webhook_timeout_seconds * 1000 - 100


@pytest.mark.dialects  # claims with FOR UPDATE SKIP LOCKED on PostgreSQL
async def test_an_endless_answer_is_read_only_up_to_the_size_limit(live: Api, receiver: Receiver) -> None:
    _, token = await tenant_token(live)
    hook = await create_webhook(live, token, receiver.url)
    receiver.endless = True
    sent = (await live.client.post(f"/v1/webhooks/{hook['id']}/test", headers=token)).json()
    url = f"/v1/webhooks/{hook['id']}/deliveries/{sent['id']}"

    async def succeeded() -> dict[str, Any] | None:
        found = (await live.client.get(url, headers=token)).json()
        return found if found["state"] == "succeeded" else None

    delivery = await eventually(succeeded, timeout=8, what="the delivery to succeed without reading the whole answer")
    assert delivery["attempts"] == 1 and delivery["response_status"] == 200
    assert delivery["latency_ms"] < live.tokens.settings.webhook_timeout_seconds * 1000
