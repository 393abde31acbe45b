"""The CI side of the ``ctrlplane`` command: deploy, rollback, status, releases, logs, metrics and
webhooks over the HTTP API.

Configured by ``CTRLPLANE_URL`` (default ``http://127.0.0.1:8080``) and ``CTRLPLANE_TOKEN`` (a JWT
or an API key). ``deploy`` sends an ``Idempotency-Key`` derived from its inputs, so a CI step that
is retried (same instance, image, strategy, env, notes and commit) never deploys twice within the
server's idempotency window; ``--idempotency-key`` overrides it. ``--wait`` follows the instance's
event stream, prints the deploy's progress and exits with its outcome:

    0 succeeded   1 failed   2 bad usage or configuration   3 rolled back   4 cancelled
    5 timed out (--timeout)  6 authentication or permission refused  7 any other API error
    8 rolled back by its traffic analysis (``--max-error-ratio``, ``--max-p99-ms``, ...)

A deploy with a release phase streams the release command's output (``release | ...`` lines) and,
when the release phase fails, exits with the command's own exit code (1 if it had none: a crash or
a provider error; 137 after a timeout's kill). ``run INSTANCE -- CMD...`` starts a one-off run,
streams its output as it is written and exits with the command's exit code (130 if cancelled).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx

from ctrlplane import httpclients
from ctrlplane.timeutil import parse_duration

EXIT = {"succeeded": 0, "failed": 1, "rolled_back": 3, "cancelled": 4}
EXIT_USAGE, EXIT_TIMEOUT, EXIT_AUTH, EXIT_API, EXIT_ANALYSIS = 2, 5, 6, 7, 8
TERMINAL_EVENTS = {"deploy.succeeded", "deploy.failed", "deploy.rolled_back", "deploy.cancelled"}


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def line(self, text: str, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps(fields, default=str), flush=True)
        else:
            print(text, flush=True)


class Api:
    def __init__(self) -> None:
        token = os.environ.get("CTRLPLANE_TOKEN")
        if not token:
            raise CliError("CTRLPLANE_TOKEN is not set (a JWT or an API key)", EXIT_USAGE)
        base_url = os.environ.get("CTRLPLANE_URL") or "http://127.0.0.1:8080"
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise CliError(f"CTRLPLANE_URL must be an http:// or https:// URL, not {base_url!r}", EXIT_USAGE)
        self.http = httpx.Client(
            base_url=base_url,
            verify=httpclients.verify_for(base_url),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, or CliError for an unreachable server or a 4xx/5xx answer."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach ctrlplane at {self.http.base_url}: {exc}", EXIT_API) from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            code = EXIT_AUTH if response.status_code in (401, 403) else EXIT_API
            raise CliError(f"{method} {path}: {response.status_code} {message}", code)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        return response.json() if response.content else None

    def instance(self, ref: str) -> dict[str, Any]:
        """An instance by ID, or by name within the token's tenant."""
        if ref.startswith("inst_"):
            return dict(self.request("GET", f"/v1/instances/{ref}"))
        found = self.request("GET", "/v1/instances", params={"name": ref})["items"]
        if not found:
            raise CliError(f"no instance named {ref!r}", EXIT_API)
        return dict(found[0])

    def events(self, instance_id: str, deadline: float) -> Iterator[dict[str, Any]]:
        """The instance's events, replayed then live, resuming after a dropped connection."""
        last = 0
        while time.monotonic() < deadline:
            try:
                with self.http.stream(
                    "GET",
                    f"/v1/instances/{instance_id}/events",
                    headers={"Accept": "text/event-stream", "Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(10, read=max(1.0, deadline - time.monotonic())),
                ) as stream:
                    for raw in stream.iter_lines():
                        if time.monotonic() > deadline:
                            return
                        if raw.startswith("data:") and raw[5:].strip():
                            event = json.loads(raw[5:])
                            last = event["id"]
                            yield dict(event)
            except httpx.ReadTimeout:
                return
            except httpx.HTTPError:
                time.sleep(1)


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--env takes KEY=VALUE, not {pair!r}", EXIT_USAGE)
        env[key] = value
    return env


def _deadline(timeout: str) -> float:
    try:
        return time.monotonic() + parse_duration(timeout)
    except ValueError as exc:
        raise CliError(f"--timeout: {exc}", EXIT_USAGE) from exc


def _run_output(api: Api, run_id: str, deadline: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """A run's ("line", line) as they are written, then ("end", run); resumes a dropped stream
    (lines already printed may repeat then)."""
    path = f"/v1/runs/{run_id}/logs"
    while time.monotonic() < deadline:
        try:
            with api.http.stream(
                "GET",
                path,
                params={"follow": "true"},
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(10, read=max(1.0, deadline - time.monotonic())),
            ) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    api.send("GET", path)  # raises the API's error
                kind = "line"
                for raw in stream.iter_lines():
                    if raw.startswith("event:"):
                        kind = raw[6:].strip()
                    elif raw.startswith("data:") and raw[5:].strip():
                        item = json.loads(raw[5:])
                        yield kind, dict(item)
                        if kind == "end":
                            return
        except httpx.ReadTimeout:
            return
        except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError):
            time.sleep(1)


def _exit_code(run: dict[str, Any]) -> int:
    if run["state"] == "succeeded":
        return 0
    if run["state"] == "cancelled":
        return 130
    return int(run["exit_code"]) if run.get("exit_code") else 1


def _follow(api: Api, out: Output, deployment: dict[str, Any], deadline: float) -> int:
    release_code: int | None = None
    analysis_failed = False
    for event in api.events(deployment["instance_id"], deadline):
        data = event.get("data") or {}
        if data.get("deployment_id") != deployment["id"]:
            continue
        detail = data.get("error") or data.get("step") or ""
        out.line(f"  {event['type']:<20} {detail}", event=event["type"], deployment_id=deployment["id"], data=data)
        if event["type"] == "deploy.release_started" and data.get("run_id"):
            for kind, item in _run_output(api, data["run_id"], deadline):
                if kind == "line":
                    out.line(f"  release | {item['message']}", release_output=item["message"], run_id=data["run_id"])
                elif kind == "end":
                    release_code = _exit_code(item)
        if event["type"] == "deploy.release_failed" and release_code is None and data.get("run_id"):
            release_code = _exit_code(api.request("GET", f"/v1/runs/{data['run_id']}"))
        analysis_failed = analysis_failed or event["type"] == "deploy.analysis_failed"
        if event["type"] in TERMINAL_EVENTS:
            final = api.request("GET", f"/v1/deployments/{deployment['id']}")
            state = final["state"]
            out.line(
                f"deployment {final['id']} {state}" + (f": {final['error']}" if final.get("error") else ""),
                result=state,
                deployment=final,
            )
            if state == "failed" and release_code not in (None, 0):
                return int(release_code)
            if state == "rolled_back" and analysis_failed:
                return EXIT_ANALYSIS
            return EXIT[state]
    out.line(f"timed out waiting for deployment {deployment['id']}", result="timeout", deployment_id=deployment["id"])
    return EXIT_TIMEOUT


def _started(out: Output, deployment: dict[str, Any], replayed: bool) -> None:
    again = " (already requested: replayed)" if replayed else ""
    out.line(
        f"deployment {deployment['id']} {deployment['state']} ({deployment['strategy']}){again}",
        deployment=deployment,
        replayed=replayed,
    )


def deploy(args: Any) -> int:
    out, api = Output(args.json), Api()
    env = _env_pairs(args.env or [])
    deadline = _deadline(args.timeout)
    instance = api.instance(args.instance)
    body: dict[str, Any] = {"image": args.image, "strategy": args.strategy, "env": env, "notes": args.notes or ""}
    if args.commit_sha:
        body["commit_sha"] = args.commit_sha
    if args.release_command is not None:
        body["release_command"] = args.release_command
    if args.release_timeout is not None:
        body["release_timeout"] = args.release_timeout
    analysis = {
        name: value
        for name, value in (
            ("max_error_ratio", args.max_error_ratio),
            ("max_p99_ms", args.max_p99_ms),
            ("min_requests", args.min_requests),
            ("window", args.analysis_window),
        )
        if value is not None
    }
    if analysis:
        body["analysis"] = analysis
    if args.steps:
        try:
            body["steps"] = [int(part) for part in args.steps.split(",")]
        except ValueError as exc:
            raise CliError(f"--steps takes weights like 10,50,100, not {args.steps!r}", EXIT_USAGE) from exc
    key = (
        args.idempotency_key
        or "cli-deploy-" + hashlib.sha256(json.dumps([instance["id"], body], sort_keys=True).encode()).hexdigest()[:40]
    )
    response = api.send("POST", f"/v1/instances/{instance['id']}/deploy", json=body, headers={"Idempotency-Key": key})
    deployment = dict(response.json())
    _started(out, deployment, response.headers.get("Idempotent-Replayed") == "true")
    return _follow(api, out, deployment, deadline) if args.wait else 0


def rollback(args: Any) -> int:
    out, api = Output(args.json), Api()
    deadline = _deadline(args.timeout)
    instance = api.instance(args.instance)
    target = args.to or _previous_release(api, instance)
    key = (
        args.idempotency_key or "cli-rollback-" + hashlib.sha256(f"{instance['id']}|{target}".encode()).hexdigest()[:40]
    )
    response = api.send(
        "POST",
        f"/v1/instances/{instance['id']}/rollback",
        json={"release_id": target, "strategy": args.strategy, "run_release": bool(args.run_release)},
        headers={"Idempotency-Key": key},
    )
    deployment = dict(response.json())
    _started(out, deployment, response.headers.get("Idempotent-Replayed") == "true")
    return _follow(api, out, deployment, deadline) if args.wait else 0


def _previous_release(api: Api, instance: dict[str, Any]) -> str:
    """The newest release before the current one that actually ran: made by create or update, or
    by a deploy or rollback that succeeded (a failed deploy's release never ran)."""
    path = f"/v1/instances/{instance['id']}"
    releases = api.request("GET", f"{path}/releases", params={"limit": 100})["items"]
    outcomes = {
        d["release_id"]: d["state"] for d in api.request("GET", f"{path}/deployments", params={"limit": 100})["items"]
    }
    current = next((r for r in releases if r["id"] == instance["current_release_id"]), None)
    for release in releases:
        if current is not None and release["version"] >= current["version"]:
            continue
        if release["reason"] in ("create", "update") or outcomes.get(release["id"]) == "succeeded":
            return str(release["id"])
    raise CliError("no release before the current one that ran; name one with --to", EXIT_API)


def status(args: Any) -> int:
    out, api = Output(args.json), Api()
    instance = api.instance(args.instance)
    endpoints = ", ".join(e["url"] for e in instance["endpoints"]) or "none"
    hostnames = ", ".join(instance.get("hostnames") or []) or "none"
    out.line(
        f"{instance['name']} ({instance['id']}): {instance['state']} (wants {instance['desired_state']}), "
        f"image {instance['image']}, release {instance['current_release_id']}, "
        f"url {instance.get('url') or 'none'} (hostnames {hostnames}), endpoints {endpoints}"
        + (f"\n  {instance['status_message']}" if instance["status_message"] else ""),
        instance=instance,
    )
    return 0


def releases(args: Any) -> int:
    out, api = Output(args.json), Api()
    instance = api.instance(args.instance)
    items = api.request("GET", f"/v1/instances/{instance['id']}/releases", params={"limit": 100})["items"]
    rows = [[f"v{r['version']}", r["id"], r["reason"], r["image"], r["created_at"], r["notes"] or ""] for r in items]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(len(rows[0]) if rows else 0)]
    for release, row in zip(items, rows, strict=True):
        marker = "*" if release["id"] == instance["current_release_id"] else " "
        columns = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.line(f"{marker} " + "  ".join(columns).rstrip(), release=release, current=marker == "*")
    if not items and not out.as_json:
        print(f"no releases for {instance['name']}", file=sys.stderr)
    return 0


def _log_line(out: Output, entry: dict[str, Any]) -> None:
    out.line(
        f"{entry['timestamp']} r{entry['replica']} {entry['stream']:<6} {entry['level'].upper():<5} {entry['message']}",
        **entry,
    )


def logs(args: Any) -> int:
    """Print the instance's log lines; with ``--follow``, keep printing new ones until the server
    ends the stream (no replica runs any more) or the user interrupts. A dropped connection is
    resumed from the last line's timestamp, skipping lines already printed."""
    out, api = Output(args.json), Api()
    if args.limit < 1 or args.limit > 1000:
        raise CliError("--limit must be between 1 and 1000", EXIT_USAGE)
    instance = api.instance(args.instance)
    path = f"/v1/instances/{instance['id']}/logs"
    params: dict[str, Any] = {"limit": args.limit}
    if args.level:
        params["level"] = args.level
    if not args.follow:
        entries = api.request("GET", path, params=params)["items"]
        for entry in entries:
            _log_line(out, entry)
        if not entries and not out.as_json:
            level = f" at level {args.level} or above" if args.level else ""
            print(f"no log lines for {instance['name']}{level}", file=sys.stderr)
        return 0
    seen: set[tuple[str, int, str, str]] = set()
    last: str | None = None
    try:
        while True:
            query = {**params, "follow": "true", **({"since": last} if last else {})}
            try:
                with api.http.stream("GET", path, params=query, timeout=httpx.Timeout(10, read=60)) as stream:
                    if stream.status_code >= 400:
                        stream.read()
                        api.send("GET", path, params=params)  # raises the API's error
                    for raw in stream.iter_lines():
                        if not raw.startswith("data:"):
                            continue
                        entry = json.loads(raw[5:])
                        key = (entry["timestamp"], entry["replica"], entry["stream"], entry["message"])
                        if key in seen:
                            continue
                        if entry["timestamp"] != last:
                            seen.clear()
                        seen.add(key)
                        last = entry["timestamp"]
                        _log_line(out, entry)
                return 0
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ConnectError):
                time.sleep(1)
    except KeyboardInterrupt:
        return 130


def run_command(args: Any) -> int:
    """``ctrlplane run INSTANCE -- CMD...``: a one-off run; its output to stdout as written, its
    exit code as ours. Ctrl-C cancels the run."""
    out, api = Output(args.json), Api()
    argv = list(args.argv)
    if not argv:
        raise CliError("run needs a command: ctrlplane run INSTANCE -- COMMAND [ARG...]", EXIT_USAGE)
    instance = api.instance(args.instance)
    body: dict[str, Any] = {"command": argv, "env": _env_pairs(args.env or [])}
    if args.timeout is not None:
        body["timeout"] = args.timeout
    created = dict(api.request("POST", f"/v1/instances/{instance['id']}/runs", json=body))
    if args.detach:
        out.line(f"run {created['id']} {created['state']}", run=created)
        return 0
    deadline = time.monotonic() + (args.timeout or 3600) + 120
    try:
        for kind, item in _run_output(api, created["id"], deadline):
            if kind == "line":
                out.line(item["message"], **item)
            elif kind == "end":
                if item.get("error") and item["state"] != "succeeded":
                    print(f"ctrlplane: run {item['id']} {item['state']}: {item['error']}", file=sys.stderr)
                return _exit_code(item)
    except KeyboardInterrupt:
        api.send("POST", f"/v1/runs/{created['id']}/cancel")
        return 130
    print(f"ctrlplane: gave up waiting for run {created['id']}", file=sys.stderr)
    return EXIT_TIMEOUT


def metrics(args: Any) -> int:
    """Print metric series: a header line per series (name, labels, unit, point count), then a line
    per point (timestamp, series, value)."""
    out, api = Output(args.json), Api()
    instance = api.instance(args.instance)
    params = {"name": args.name, "step": args.step}
    params.update({k: v for k, v in (("since", args.since), ("route", args.route)) if v})
    found = api.request("GET", f"/v1/instances/{instance['id']}/metrics", params=params)
    for series in found["series"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(series.get("labels", {}).items()))
        name = f"{series['name']}{{{labels}}}" if labels else series["name"]
        if not args.json:
            out.line(f"{name} ({series['unit']}), {len(series['points'])} points")
        for point in series["points"]:
            out.line(f"{point['timestamp']}  {name}  {point['value']:g} {series['unit']}", series=name, **point)
    return 0


def webhooks(args: Any) -> int:
    out, api = Output(args.json), Api()
    if args.webhooks_command == "ls":
        for hook in api.request("GET", "/v1/webhooks", params={"limit": 100})["items"]:
            state = hook["status"] if hook["enabled"] else "disabled"
            out.line(f"{hook['id']}  {state:<8} {hook['url']}  {','.join(hook['event_types'])}", webhook=hook)
        return 0
    delivery = api.request("POST", f"/v1/webhooks/{args.webhook}/test")
    if not args.wait:
        out.line(f"queued {delivery['id']} to {args.webhook}", delivery=delivery)
        return 0
    deadline = _deadline(args.timeout)
    path = f"/v1/webhooks/{args.webhook}/deliveries/{delivery['id']}"
    while delivery["state"] not in ("succeeded", "failed"):
        if time.monotonic() > deadline:
            out.line(f"{delivery['id']} still {delivery['state']} after {args.timeout}", delivery=delivery)
            return EXIT_TIMEOUT
        time.sleep(0.2)
        delivery = api.request("GET", path)
    answered = delivery["response_status"] or delivery["error"]
    out.line(
        f"{delivery['id']} {delivery['state']} after {delivery['attempts']} attempt(s): {answered}, "
        f"{delivery['latency_ms']} ms",
        delivery=delivery,
    )
    return 0 if delivery["state"] == "succeeded" else 1


def run(command: Any, args: Any) -> int:
    try:
        return int(command(args))
    except CliError as exc:
        print(f"ctrlplane: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        # the reader (``| head``) went away: stop quietly, as other Unix tools do
        sys.stderr.close()
        return 0
