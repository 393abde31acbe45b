"""Log drains through the API and the shipper, to a receiver on loopback (fake provider here;
tests/drains/test_log_drains_docker.py does it against a real Docker engine)."""

from __future__ import annotations

import base64
import gzip
import json
import time
from typing import Any

import pytest

from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import instance_token
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.api.test_secrets import put_secret
from tests.conftest import Api
from tests.fakes import FakeProvider
from tests.webhooks.receiver import Receiver
from tests.webhooks.test_webhooks import eventually

SECRET = "sv-9c2e7b1d-drained-by-the-app"


def ndjson_lines(receiver: Receiver) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for request in receiver.received():
        assert request.headers["content-encoding"] == "gzip"
        assert request.headers["content-type"] == "application/x-ndjson"
        lines += [json.loads(line) for line in gzip.decompress(request.body).splitlines()]
    return lines


async def create_drain(api: Api, token: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.client.post("/v1/log-drains", json=body, headers=token)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_an_instance_drain_receives_every_line_labelled_within_5s(
    live: Api, fake: FakeProvider, receiver: Receiver
) -> None:
    tenant_id, token = await tenant_token(live)
    instance = await create(live, token)
    other = await create(live, token, name="other")
    running = await wait_for(live, instance["id"], token, state("running"))
    await wait_for(live, other["id"], token, state("running"))
    drain = await create_drain(live, token, url=receiver.url, instance_id=instance["id"])
    assert drain["format"] == "ndjson" and drain["sent_lines"] == 0
    await eventually(lambda: _followed(fake, instance["id"]), what="the shipper following the instance")
    written = time.monotonic()
    fake.emit_log(instance["id"], '{"level":"error","msg":"card declined"}', stream="stderr")
    fake.emit_log(instance["id"], "GET /health 200")
    fake.emit_log(other["id"], "not for this drain")

    async def both() -> list[dict[str, Any]] | None:
        found = ndjson_lines(receiver)
        return found if len(found) >= 2 else None

    lines = await eventually(both, timeout=5, what="both lines at the drain within 5 s")
    assert time.monotonic() - written < 5
    assert [(line["level"], line["message"], line["stream"]) for line in lines] == [
        ("error", "card declined", "stderr"),
        ("info", "GET /health 200", "stdout"),
    ]
    for line in lines:
        assert line["tenant_id"] == tenant_id and line["instance_id"] == instance["id"]
        assert line["release_id"] == running["current_release_id"] and line["replica"] == 0
        assert line["timestamp"]

    async def counted() -> dict[str, Any] | None:
        found = (await live.client.get(f"/v1/log-drains/{drain['id']}", headers=token)).json()
        return found if found["sent_lines"] == 2 else None

    shown = await eventually(counted, what="the drain's counter")
    assert shown["dropped_lines"] == 0 and shown["last_sent_at"] and shown["last_error"] is None
    assert all(line["message"] != "not for this drain" for line in ndjson_lines(receiver))


async def _followed(fake: FakeProvider, instance_id: str) -> bool:
    return ("logs", instance_id) in fake.calls


async def test_a_tenant_drain_in_otlp_gets_every_instance(live: Api, fake: FakeProvider, receiver: Receiver) -> None:
    tenant_id, token = await tenant_token(live)
    first = await create(live, token)
    second = await create(live, token, name="second")
    await wait_for(live, first["id"], token, state("running"))
    await wait_for(live, second["id"], token, state("running"))
    await create_drain(live, token, url=receiver.url, format="otlp")
    await eventually(lambda: _followed(fake, second["id"]), what="the shipper following both instances")
    await eventually(lambda: _followed(fake, first["id"]), what="the shipper following both instances")
    fake.emit_log(first["id"], "level=warn msg=slow")
    fake.emit_log(second["id"], "hello from second")

    def records() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for request in receiver.received():
            body = json.loads(gzip.decompress(request.body))
            for resource in body["resourceLogs"]:
                attributes = {a["key"]: a["value"]["stringValue"] for a in resource["resource"]["attributes"]}
                assert attributes["ctrlplane.tenant_id"] == tenant_id
                for scope in resource["scopeLogs"]:
                    found.setdefault(attributes["ctrlplane.instance_id"], []).extend(scope["logRecords"])
        return found

    async def both() -> dict[str, list[dict[str, Any]]] | None:
        found = records()
        return found if len(found) == 2 else None

    found = await eventually(both, timeout=5, what="both instances' lines")
    [slow] = found[first["id"]]
    assert slow["severityText"] == "WARN" and slow["body"]["stringValue"] == "slow"
    assert found[second["id"]][0]["body"]["stringValue"] == "hello from second"


async def test_a_failing_receiver_is_retried_then_the_lines_are_counted_as_dropped(
    live: Api, fake: FakeProvider, receiver: Receiver
) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    receiver.status = 503
    drain = await create_drain(live, token, url=receiver.url, instance_id=instance["id"])
    await eventually(lambda: _followed(fake, instance["id"]), what="the shipper following the instance")
    for n in range(3):
        fake.emit_log(instance["id"], f"line {n}")

    async def dropped() -> dict[str, Any] | None:
        found = (await live.client.get(f"/v1/log-drains/{drain['id']}", headers=token)).json()
        return found if found["dropped_lines"] >= 3 else None

    shown = await eventually(dropped, timeout=10, what="the lines counted as dropped")
    assert shown["sent_lines"] == 0 and "503" in shown["last_error"]
    assert len(receiver.received()) >= 2, "the batch was retried"


@pytest.mark.parametrize("url", ["http://10.0.0.8/logs", "http://169.254.169.254/", "http://[::1]/x", "file:///etc"])
async def test_a_drain_url_on_a_refused_address_is_400(api: Api, url: str) -> None:
    _, token = await tenant_token(api)
    refused = await api.client.post("/v1/log-drains", json={"url": url}, headers=token)
    assert refused.status_code == 400, refused.text
    assert (await api.client.get("/v1/log-drains", headers=token)).json()["total"] == 0


async def test_other_tenant_gets_404_for_drains_and_instances(api: Api) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    instance = await create(api, token)
    drain = await create_drain(api, token, url="https://logs.example.invalid/in", instance_id=instance["id"])
    for method in ("GET", "DELETE"):
        response = await api.client.request(method, f"/v1/log-drains/{drain['id']}", headers=other)
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    foreign = await api.client.post(
        "/v1/log-drains", json={"url": "https://logs.example.invalid/x", "instance_id": instance["id"]}, headers=other
    )
    assert foreign.status_code == 404
    assert (await api.client.get("/v1/log-drains", headers=other)).json()["total"] == 0
    assert (await api.client.get(f"/v1/log-drains/{drain['id']}", headers=token)).status_code == 200
    assert (await api.client.delete(f"/v1/log-drains/{drain['id']}", headers=token)).status_code == 204
    assert (await api.client.get("/v1/log-drains", headers=token)).json()["total"] == 0


async def test_a_drains_own_headers_go_with_every_delivery_and_are_never_shown(
    live: Api, fake: FakeProvider, receiver: Receiver
) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    secret = "Bearer drain-credential-7f3a"
    drain = await create_drain(
        live, token, url=receiver.url, instance_id=instance["id"], headers={"Authorization": secret, "X-Team": "pay"}
    )
    assert drain["header_names"] == ["Authorization", "X-Team"]
    await eventually(lambda: _followed(fake, instance["id"]), what="the shipper following the instance")
    fake.emit_log(instance["id"], "first")

    async def delivered() -> list[dict[str, Any]] | None:
        return ndjson_lines(receiver) or None

    await eventually(delivered, timeout=5, what="a delivery")
    fake.emit_log(instance["id"], "second")

    async def both() -> list[dict[str, Any]] | None:
        return ndjson_lines(receiver) if len(ndjson_lines(receiver)) >= 2 else None

    await eventually(both, timeout=5, what="the second line")
    assert all(r.headers["authorization"] == secret and r.headers["x-team"] == "pay" for r in receiver.received())
    shown = await live.client.get(f"/v1/log-drains/{drain['id']}", headers=token)
    listed = await live.client.get("/v1/log-drains", headers=token)
    assert secret not in shown.text and secret not in listed.text
    assert shown.json()["header_names"] == ["Authorization", "X-Team"]


async def test_drained_lines_are_redacted_of_the_instances_secrets_and_otlp_token(
    live: Api, fake: FakeProvider, receiver: Receiver, settings: Settings
) -> None:
    """What leaves for a drain is what ``GET .../logs`` shows: secret values and the OTLP token,
    exact and in base64, are ``[redacted]`` (issue 16, item 6)."""
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    await put_secret(live, token, instance["id"], "DB_PASSWORD", SECRET)
    otlp = instance_token(settings, instance["id"])
    encoded = base64.b64encode(SECRET.encode()).decode()
    await create_drain(live, token, url=receiver.url, instance_id=instance["id"])
    await eventually(lambda: _followed(fake, instance["id"]), what="the shipper following the instance")
    fake.emit_log(instance["id"], f"password={SECRET}")
    fake.emit_log(instance["id"], f'{{"level":"error","msg":"auth {encoded} / Bearer {otlp}"}}', stream="stderr")

    async def both() -> list[dict[str, Any]] | None:
        found = ndjson_lines(receiver)
        return found if len(found) >= 2 else None

    lines = await eventually(both, timeout=5, what="both lines at the drain")
    assert [(line["level"], line["message"]) for line in lines] == [
        ("info", "password=[redacted]"),
        ("error", "auth [redacted] / Bearer [redacted]"),
    ]
    bodies = b"".join(gzip.decompress(request.body) for request in receiver.received()).decode()
    assert SECRET not in bodies and encoded not in bodies and otlp not in bodies


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {"Bad Name": "x"}, {"X-A": "one\r\nInjected: yes"}, {"X-A": ""}],
)
async def test_bad_or_reserved_drain_headers_are_400(api: Api, headers: dict[str, str]) -> None:
    _, token = await tenant_token(api)
    refused = await api.client.post(
        "/v1/log-drains", json={"url": "https://logs.example.com/in", "headers": headers}, headers=token
    )
    assert refused.status_code == 400, refused.text
    assert (await api.client.get("/v1/log-drains", headers=token)).json()["total"] == 0
