"""`ctrlplane logs` against a live server with the fake provider: lines with levels, --level,
--limit, --json, --follow, and its exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from tests.api.test_cli_pipeline import cli
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.conftest import Api
from tests.fakes import FakeProvider


async def test_logs_prints_lines_with_levels_and_filters(live: Api, live_server: str, fake: FakeProvider) -> None:
    tenant_id, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    key = (await live.create_key(tenant_id, ["read"]))["key"]
    fake.emit_log(instance["id"], '{"level":"error","msg":"card declined"}', stream="stderr")
    fake.emit_log(instance["id"], "GET /health 200")
    result = await cli(live_server, key, "logs", "web")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert "ERROR" in first and "card declined" in first and "stderr" in first
    assert "INFO" in second and "GET /health 200" in second
    errors = await cli(live_server, key, "logs", instance["id"], "--level", "error", "--json")
    assert errors.returncode == 0, errors.stderr
    [entry] = [json.loads(line) for line in errors.stdout.splitlines()]
    assert (entry["level"], entry["message"], entry["replica"]) == ("error", "card declined", 0)
    last = await cli(live_server, key, "logs", "web", "--limit", "1")
    assert last.stdout.count("\n") == 1 and "GET /health 200" in last.stdout


async def test_logs_exit_codes_for_bad_usage_and_refused_credentials(live: Api, live_server: str) -> None:
    _, token = await tenant_token(live)
    await create(live, token)
    assert (await cli(live_server, None, "logs", "web")).returncode == 2
    assert (await cli(live_server, "cpk_unknown-key", "logs", "web")).returncode == 6
    bad_level = await cli(live_server, "cpk_unknown-key", "logs", "web", "--level", "loud")
    assert bad_level.returncode == 2
    help_text = await cli(live_server, None, "logs", "--help")
    assert help_text.returncode == 0 and "--follow" in help_text.stdout


async def test_logs_follow_prints_new_lines_as_they_are_written(
    live: Api, live_server: str, fake: FakeProvider
) -> None:
    tenant_id, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    key = (await live.create_key(tenant_id, ["read"]))["key"]
    fake.emit_log(instance["id"], "already there")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")}
    env.update(CTRLPLANE_URL=live_server, CTRLPLANE_TOKEN=key)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ctrlplane.cli", "logs", "web", "--follow", "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        assert first["message"] == "already there"
        fake.emit_log(instance["id"], "WARN written while following")
        second = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert (second["message"], second["level"]) == ("WARN written while following", "warn")
        # the stream ends when no replica runs any more, and the command with it
        await live.client.post(f"/v1/instances/{instance['id']}/stop", headers=token)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_logs_says_so_when_there_are_no_lines(live: Api, live_server: str) -> None:
    tenant_id, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    key = (await live.create_key(tenant_id, ["read"]))["key"]
    result = await cli(live_server, key, "logs", "web", "--level", "error")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == "no log lines for web at level error or above"
    as_json = await cli(live_server, key, "logs", "web", "--json")
    assert (as_json.stdout, as_json.stderr) == ("", "")
