"""``ctrlplane env up|extend|down|ls`` against a live server, as a CI pipeline runs them."""

from __future__ import annotations

import json

from tests.api.environments.helpers import template, tenant
from tests.api.test_cli_pipeline import cli
from tests.conftest import Api


# Slow by design: each of its CLI calls is a new Python process importing ctrlplane.
async def test_env_up_prints_the_url_and_is_the_same_environment_on_every_run(live: Api, live_server: str) -> None:
    tenant_id, token = await tenant(live)
    await template(live, token, max_environments_per_owner=1)
    key = (await live.create_key(tenant_id, ["deploy"]))["key"]
    args = ("env", "up", "--template", "preview", "--key", "pr-5", "--param", "greeting=hi", "--param", "workers=3")
    first = await cli(live_server, key, *args, "--ttl", "2h", "--tag", "pr", "--wait")
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip()
    assert url.startswith("http://pr-5-") and url.endswith(".acme.localhost")
    assert "created" in first.stderr
    again = await cli(live_server, key, *args, "--json")
    assert again.returncode == 0, again.stderr
    environment = json.loads(again.stdout)
    assert environment["url"] == url
    assert environment["parameters"]["workers"] == 3
    assert "already there" in again.stderr

    other = await cli(live_server, key, "env", "up", "--template", "preview", "--key", "pr-6", "--param", "greeting=x")
    assert other.returncode == 6, other.stderr
    assert "quota" in other.stderr

    listed = await cli(live_server, key, "env", "ls", "--tag", "pr")
    assert listed.returncode == 0, listed.stderr
    assert "pr-5" in listed.stdout and url in listed.stdout

    extended = await cli(live_server, key, "env", "extend", "pr-5", "--by", "30m", "--json")
    assert extended.returncode == 0, extended.stderr
    assert json.loads(extended.stdout)["extends_left"] == 1

    down = await cli(live_server, key, "env", "down", "pr-5", "--hard")
    assert down.returncode == 0, down.stderr
    assert "terminating" in down.stderr
    gone = await cli(live_server, key, "env", "down", "pr-5")
    assert gone.returncode == 7
    assert "no active environment" in gone.stderr


async def test_env_up_with_a_missing_parameter_fails_naming_it(live: Api, live_server: str) -> None:
    tenant_id, token = await tenant(live)
    await template(live, token)
    key = (await live.create_key(tenant_id, ["deploy"]))["key"]
    result = await cli(live_server, key, "env", "up", "--template", "preview", "--key", "pr-1", "--param", "debug=2")
    assert result.returncode == 7
    assert "greeting (required)" in result.stderr
    assert "debug (must be a boolean)" in result.stderr
    assert result.stdout == ""
    usage = await cli(live_server, key, "env", "up", "--template", "preview", "--key", "pr-1", "--param", "nope")
    assert usage.returncode == 2
