"""The request log line: one JSON line per request, no credential in it, at the configured level,
through the logger ``configure_logging`` binds once (``logs.request_logger``)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from ctrlplane import logs
from ctrlplane.settings import Settings
from ctrlplane.web.access_log import RequestContextASGI
from tests.asgi import asgi_get

SECRET = "unit-test-secret-long-enough-for-hs256-0123456789"


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Logging configured as ``ctrlplane serve`` configures it, writing to a stream of the test's
    (set in the test's own phase: pytest swaps ``sys.stderr`` between setup and call); structlog's
    defaults, the unconfigured request logger and the root logger's handlers back afterwards."""

    def configure(level: str) -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setattr(logs, "_request_logger", None)  # undone to None at teardown
        logs.configure_logging(Settings(jwt_secret=SECRET, log_format="json", log_level=level))
        return stream

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield configure
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_one_json_line_per_request_without_the_token(configured: Any) -> None:
    stderr = configured("info")
    app = RequestContextASGI(_answer, version="test")
    assert await asgi_get(app, "/v1/instances", "Bearer cpk_secret-value") == 204
    assert await asgi_get(app, "/v1/instances", "Bearer cpk_secret-value") == 204
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 2 and "cpk_secret-value" not in stderr.getvalue()
    entry = json.loads(lines[0])
    assert entry["event"] == "request" and entry["level"] == "info"
    assert (entry["method"], entry["route"], entry["status"]) == ("GET", "/v1/instances", 204)
    assert entry["request_id"].startswith("req_") and entry["request_id"] != json.loads(lines[1])["request_id"]

    with capture_logs() as captured:  # the bound logger still reaches the test helper's capture
        await asgi_get(app, "/v1/instances", "Bearer x")
    assert [e["event"] for e in captured] == ["request"]
    assert len(stderr.getvalue().splitlines()) == 2


async def test_a_level_above_info_writes_no_request_line(configured: Any) -> None:
    stderr = configured("warning")
    assert await asgi_get(RequestContextASGI(_answer, version="test"), "/v1/instances", "Bearer x") == 204
    assert stderr.getvalue() == ""


def test_the_bound_request_logger_does_not_outlive_its_test(configured: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the fixture's teardown undoes puts the unconfigured proxy back, so a later test in the
    worker does not log through this test's stream."""
    stderr = configured("info")
    assert logs.request_logger() is not logs._request_proxy and sys.stderr is stderr
    monkeypatch.undo()
    assert logs.request_logger() is logs._request_proxy and sys.stderr is not stderr


def test_the_standard_librarys_records_are_lines_of_the_same_log_at_its_level(configured: Any) -> None:
    """A library's record (alembic, uvicorn, a provider's client) is a JSON line like ctrlplane's own,
    with its logger's name; below the configured level it is not written."""
    stderr = configured("warning")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")
    logging.getLogger("docker.utils").warning("engine slow: %s ms", 1500)
    [line] = stderr.getvalue().splitlines()
    entry = json.loads(line)
    assert (entry["event"], entry["level"], entry["logger"]) == ("engine slow: 1500 ms", "warning", "docker.utils")
    assert entry["timestamp"].endswith("Z")
