"""An instance's own log lines (``GET /v1/instances/{id}/logs``, plain and followed, and the
dashboard's recent errors) are shown only after its secret values and its OTLP token, exact and
in base64, are redacted (issue 16, item 6). The log drains' side is tests/drains/test_log_drains.py;
a real container's is tests/api/test_telemetry_docker.py."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from ctrlplane.secrets import service as secrets_service
from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import instance_token
from tests.api.test_deployments import finished
from tests.api.test_instances import tenant_token
from tests.api.test_secrets import put_secret
from tests.api.test_telemetry import read_log_events, running
from tests.conftest import Api
from tests.fakes import FakeProvider

SECRET = "sv-4f1d2a9c-logged-by-the-app"
ENCODED = base64.b64encode(SECRET.encode()).decode()
KEY_LINE = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
KEY_FILE = f"-----BEGIN PRIVATE KEY-----\n{KEY_LINE}\n-----END PRIVATE KEY-----\n"


def leaked(text: str, *values: str) -> list[str]:
    return [value for value in values if value in text]


def emit_secrets(fake: FakeProvider, instance_id: str, otlp: str) -> None:
    fake.emit_log(instance_id, f"connecting with password={SECRET}")
    fake.emit_log(instance_id, f"basic auth header {ENCODED}", stream="stderr")
    fake.emit_log(instance_id, f"ERROR exporter refused Bearer {otlp}")
    # a structured line's message comes out unescaped: redacted after parsing, not before
    fake.emit_log(instance_id, '{"level":"error","msg":"dsn sv\\u002d4f1d2a9c-logged-by-the-app"}')
    fake.emit_log(instance_id, KEY_LINE)  # one line of a file secret the app printed
    fake.emit_log(instance_id, "GET / 200")


EXPECTED = [
    ("info", "connecting with password=[redacted]"),
    ("info", "basic auth header [redacted]"),
    ("error", "ERROR exporter refused Bearer [redacted]"),
    ("error", "dsn [redacted]"),
    ("info", "[redacted]"),
    ("info", "GET / 200"),
]


async def test_logs_plain_followed_and_on_the_dashboard_are_redacted_of_secrets_and_the_otlp_token(
    live: Api, fake: FakeProvider, settings: Settings
) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token)
    await put_secret(live, token, instance["id"], "DB_PASSWORD", SECRET)
    await put_secret(live, token, instance["id"], "/etc/app/key.pem", KEY_FILE, type="file")
    otlp = instance_token(settings, instance["id"])
    emit_secrets(fake, instance["id"], otlp)
    path = f"/v1/instances/{instance['id']}/logs"

    plain = await live.client.get(path, headers=token)
    assert plain.status_code == 200, plain.text
    assert [(e["level"], e["message"]) for e in plain.json()["items"]] == EXPECTED
    assert not leaked(plain.text, SECRET, ENCODED, otlp, KEY_LINE)
    errors = await live.client.get(path, params={"level": "error"}, headers=token)
    assert [e["message"] for e in errors.json()["items"]] == [m for lvl, m in EXPECTED if lvl == "error"]

    dashboard = await live.client.get(f"/v1/instances/{instance['id']}/dashboard", headers=token)
    assert dashboard.status_code == 200, dashboard.text
    assert [e["message"] for e in dashboard.json()["recent_errors"]] == [m for lvl, m in EXPECTED if lvl == "error"]
    assert not leaked(dashboard.text, SECRET, ENCODED, otlp, KEY_LINE)

    async with live.client.stream("GET", path, params={"follow": "true", "limit": 10}, headers=token) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        tail = await asyncio.wait_for(read_log_events(lines, len(EXPECTED)), 10)
        fake.emit_log(instance["id"], f"later: {SECRET} and {ENCODED}")
        [later] = await asyncio.wait_for(read_log_events(lines, 1), 10)
    assert [(e["level"], e["message"]) for e in tail] == EXPECTED
    assert later["message"] == "later: [redacted] and [redacted]"


async def test_a_secret_set_while_logs_are_followed_is_redacted_from_later_lines(
    live: Api, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's redactor looks again at most every ``REFRESH_SECONDS`` (0 here); the value the
    containers still run with (set with a restart, then replaced without one) stays redacted."""
    monkeypatch.setattr(secrets_service, "REFRESH_SECONDS", 0.0, raising=False)
    _, token = await tenant_token(live)
    instance = await running(live, token, ports=[])  # no port: the fake's deploy gate passes once replicas run
    rolled = await put_secret(live, token, instance["id"], "API_KEY", "ak-running-value-1", restart="true")
    assert (await finished(live, rolled["deployment_id"], token, timeout=60))["state"] == "succeeded"
    path = f"/v1/instances/{instance['id']}/logs"
    async with live.client.stream("GET", path, params={"follow": "true"}, headers=token) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        fake.emit_log(instance["id"], "before ak-running-value-1")
        [before] = await asyncio.wait_for(read_log_events(lines, 1), 10)
        await put_secret(live, token, instance["id"], "API_KEY", "ak-not-yet-deployed-2")
        await put_secret(live, token, instance["id"], "NEW_TOKEN", "nt-set-while-followed")
        fake.emit_log(instance["id"], "after ak-running-value-1 ak-not-yet-deployed-2 nt-set-while-followed")
        [after] = await asyncio.wait_for(read_log_events(lines, 1), 10)
    assert before["message"] == "before [redacted]"
    assert after["message"] == "after [redacted] [redacted] [redacted]"


async def test_logs_of_an_instance_whose_secrets_cannot_be_read_are_withheld(
    live: Api, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: a line is never shown unredacted because the values to redact were unreadable."""
    _, token = await tenant_token(live)
    instance = await running(live, token)
    await put_secret(live, token, instance["id"], "DB_PASSWORD", SECRET)
    fake.emit_log(instance["id"], f"password={SECRET}")

    async def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise secrets_service.DecryptionFailed("the tenant's data key is gone")

    monkeypatch.setattr(secrets_service, "workload_secrets", unreadable)
    body = (await live.client.get(f"/v1/instances/{instance['id']}/logs", headers=token)).json()
    assert [e["message"] for e in body["items"]] == [secrets_service.WITHHELD]


async def test_each_line_of_a_multi_line_env_secret_is_redacted_when_printed_line_by_line(
    live: Api, fake: FakeProvider
) -> None:
    """A PEM key kept in an env variable (as many apps take it) comes out of a log one line at a
    time, as a file secret's does (review: only files were split)."""
    _, token = await tenant_token(live)
    instance = await running(live, token)
    await put_secret(live, token, instance["id"], "TLS_KEY", KEY_FILE)
    fake.emit_log(instance["id"], KEY_LINE)
    plain = await live.client.get(f"/v1/instances/{instance['id']}/logs", headers=token)
    assert plain.status_code == 200, plain.text
    assert [e["message"] for e in plain.json()["items"]] == ["[redacted]"]
