"""``ctrlplane env up|extend|down|ls``: environments from a CI pipeline, over the HTTP API.

``up`` is a get-or-create by key, so a pipeline that runs it on every push of a pull request gets
the same environment each time (a changed ``--param`` is a 409 unless ``--replace``). It prints the
environment's URL on stdout (everything else goes to stderr), so ``URL=$(ctrlplane env up ...)``
works; ``--json`` prints the whole environment instead. Exit codes are the deploy commands':
0 done, 1 its instance failed, 2 bad usage, 5 ``--wait`` timed out, 6 refused (401/403, e.g. a
quota), 7 any other API error.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ctrlplane.client import EXIT_API, EXIT_TIMEOUT, EXIT_USAGE, Api, CliError, _deadline

POLL_SECONDS = 1.0


def _pairs(pairs: list[str], flag: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} takes KEY=VALUE, not {pair!r}", EXIT_USAGE)
        values[key] = value
    return values


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _show(environment: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(environment), flush=True)
    else:
        print(environment["url"] or "", flush=True)


def _find(api: Api, reference: str) -> dict[str, Any]:
    """An environment by id, or the live one with this key."""
    if reference.startswith("env_"):
        return dict(api.request("GET", f"/v1/environments/{reference}"))
    found = api.request("GET", "/v1/environments", params={"key": reference, "state": "active"})["items"]
    if not found:
        raise CliError(f"no active environment with key {reference!r}", EXIT_API)
    return dict(found[0])


def up(args: Any) -> int:
    api = Api()
    deadline = _deadline(args.timeout)
    body: dict[str, Any] = {
        "key": args.key,
        "template": args.template,
        "parameters": _pairs(args.param or [], "--param"),
        "tags": args.tag or [],
        "replace": args.replace,
    }
    for field in ("ttl", "idle_timeout", "max_lifetime", "on_idle"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    response = api.send("POST", "/v1/environments", json=body)
    environment = dict(response.json())
    _say(
        f"environment {environment['id']} ({environment['key']}) "
        + ("created" if response.status_code == 201 else "already there")
        + (f", expires {environment['expires_at']}" if environment["expires_at"] else "")
    )
    if args.wait:
        while environment["instance_state"] != "running":
            if environment["instance_state"] == "failed" or environment["state"] != "active":
                _say(f"environment {environment['id']}: instance {environment['instance_state']}")
                _show(environment, args.json)
                return 1
            if time.monotonic() > deadline:
                _say(f"timed out waiting for environment {environment['id']} to run")
                return EXIT_TIMEOUT
            time.sleep(POLL_SECONDS)
            environment = dict(api.request("GET", f"/v1/environments/{environment['id']}"))
    _show(environment, args.json)
    return 0


def extend(args: Any) -> int:
    api = Api()
    environment = _find(api, args.environment)
    body = {"by": args.by} if args.by else {}
    extended = dict(api.request("POST", f"/v1/environments/{environment['id']}/extend", json=body))
    _say(f"environment {extended['id']} expires {extended['expires_at']} ({extended['extends_left']} extends left)")
    if args.json:
        print(json.dumps(extended), flush=True)
    return 0


def down(args: Any) -> int:
    api = Api()
    environment = _find(api, args.environment)
    ended = dict(api.request("POST", f"/v1/environments/{environment['id']}/terminate", json={"hard": bool(args.hard)}))
    _say(f"environment {ended['id']} ({ended['key']}) {ended['state']}" + (" (hard)" if args.hard else ""))
    if args.json:
        print(json.dumps(ended), flush=True)
    return 0


def ls(args: Any) -> int:
    api = Api()
    params = {k: v for k, v in (("key", args.key), ("tag", args.tag), ("owner", args.owner)) if v}
    items = api.request("GET", "/v1/environments", params={**params, "limit": 100})["items"]
    for environment in items:
        if args.json:
            print(json.dumps(environment), flush=True)
        else:
            print(
                f"{environment['id']}  {environment['key']:<24} {environment['state']:<11} "
                f"{environment['instance_state'] or '-':<12} {environment['expires_at'] or 'never':<32} "
                f"{environment['url'] or ''}",
                flush=True,
            )
    return 0
