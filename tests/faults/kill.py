"""The SIGKILL scenario shared by the kill fault tests.

One test = one database (SQLite or PostgreSQL), one seed, several server lifetimes. Each run draws
from ``random.Random(f"{seed}:{run}")`` an action (create, deploy or delete of one small instance)
and a kill point: the request is sent and the server gets SIGKILL that many seconds later, so the
kill lands while the request is in flight, between the answer and the worker's provider call, or in
the middle of the provider's work. The server is started again at once and the next run goes on
while the previous operations recover. At the end the last server must converge:

* every operation and deployment is terminal, and every instance is where it was asked to be;
* the provider's inventory (the real Docker engine, which outlives the kills) matches the database
  exactly: one container per replica of the instance's current generation, none for destroyed or
  unknown instances, a tenant network only for tenants with a live instance, no stray volume;
* every request that got a 2xx (by the ``X-Request-ID`` the test sent) is in the audit log
  (``GET /v1/admin/audit``) and ``ctrlplane audit verify`` passes.

A request cut off by the kill got no answer, so it was not accepted: it may or may not have
committed, and either way the database and the engine must still agree.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import docker
import httpx
from ctrlplane_docker import DockerProvider
from sqlalchemy import text

from ctrlplane.db import Database
from ctrlplane.provisioning.registry import provider_settings
from ctrlplane.settings import Settings
from tests.conftest import Tokens, bearer
from tests.faults.harness import OK_OR_CLIENT_ERROR, audit_request_ids
from tests.harness import ServeProcess
from tests.providers.docker_engine import HTTP_PORT, IMAGE, V2_IMAGE
from tests.waiting import eventually

APP = {"image": IMAGE, "ports": [{"container_port": HTTP_PORT}], "resources": {"cpu_millis": 100, "memory_mb": 32}}
MAX_KILL_DELAY = 1.5
CONVERGE_SECONDS = 120
TERMINAL_DEPLOYMENTS = ("succeeded", "failed", "rolled_back", "cancelled")


@dataclass
class Ledger:
    accepted: dict[str, str] = field(default_factory=dict)
    """request id → what it was, for every request answered 2xx"""
    created: list[str] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)

    def live(self) -> list[str]:
        return [i for i in self.created if i not in self.deleted]


async def send(
    http: httpx.AsyncClient, ledger: Ledger, what: str, method: str, path: str, headers: dict[str, str], **kw: Any
) -> httpx.Response | None:
    """The request with a request id of ours; None when the kill cut it off (not accepted)."""
    request_id = f"fault-{uuid.uuid4().hex}"
    try:
        response = await http.request(method, path, headers={**headers, "X-Request-ID": request_id}, **kw)
    except httpx.TransportError:
        return None
    assert response.status_code in OK_OR_CLIENT_ERROR, f"{what}: {response.status_code} {response.text}"
    if response.is_success:
        ledger.accepted[request_id] = what
    return response


async def until_running(http: httpx.AsyncClient, instance_id: str, token: dict[str, str], timeout: float = 90) -> None:
    seen: list[dict[str, Any]] = [{}]

    async def running() -> bool:
        seen[0] = (await http.get(f"/v1/instances/{instance_id}", headers=token)).json()
        return seen[0].get("state") == "running" and not await _deploying(http, instance_id, token)

    await eventually(running, lambda: f"instance {instance_id} runs (last seen: {seen[0]})", timeout=timeout)


async def _going(http: httpx.AsyncClient, instance_id: str, token: dict[str, str]) -> bool:
    response = await http.get(f"/v1/instances/{instance_id}", headers=token)
    return response.status_code == 404 or response.json().get("state") in ("destroying", "destroyed")


async def _deploying(http: httpx.AsyncClient, instance_id: str, token: dict[str, str]) -> bool:
    items = (await http.get(f"/v1/instances/{instance_id}/deployments", headers=token)).json()["items"]
    return any(d["state"] not in TERMINAL_DEPLOYMENTS for d in items)


async def run_kills(
    *,
    server: ServeProcess,
    db: Database,
    tokens: Tokens,
    settings: Settings,
    seed: int,
    runs: int,
    actions: tuple[str, ...],
) -> None:
    ledger = Ledger()
    admin = bearer(tokens.admin())
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        created = await send(
            http, ledger, "tenant", "POST", "/v1/admin/tenants",
            admin, json={"name": "Faults", "slug": "faults", "plan": "pro"},
        )  # fmt: skip
        assert created is not None and created.status_code == 201, created
        token = bearer(tokens.tenant(created.json()["id"]))
        for run in range(runs):
            rng = random.Random(f"{seed}:{run}")
            action = rng.choice(actions)
            live = ledger.live()
            if action != "create" and not live:  # something to deploy or delete, made with no kill
                made = await send(
                    http, ledger, "create", "POST", "/v1/instances", token, json={**APP, "name": f"t{run}"}
                )
                assert made is not None and made.status_code == 201, made
                ledger.created.append(made.json()["id"])
                live = ledger.live()
            delay = MAX_KILL_DELAY * rng.random() ** 2  # more kills early: in flight, before the worker
            if action == "create":
                name = f"w{run}"
                request = send(http, ledger, "create", "POST", "/v1/instances", token, json={**APP, "name": name})
            elif action == "delete":
                target = rng.choice(live)
                request = send(http, ledger, "delete", "DELETE", f"/v1/instances/{target}", token)
            else:
                target = rng.choice(live)
                await until_running(http, target, token)
                current = (await http.get(f"/v1/instances/{target}", headers=token)).json()["image"]
                image = V2_IMAGE if current == IMAGE else IMAGE
                strategy = rng.choice(["rolling", "recreate", "blue_green"])
                request = send(
                    http, ledger, "deploy", "POST", f"/v1/instances/{target}/deploy",
                    token, json={"image": image, "strategy": strategy},
                )  # fmt: skip
            task = asyncio.ensure_future(request)
            await asyncio.sleep(delay)
            server.kill()
            response = await task
            status = "cut off" if response is None else str(response.status_code)
            line = f"seed={seed} run={run} action={action} kill_after={delay:.3f}s answer={status}"
            print(line)
            ledger.log.append(line)
            if response is not None and response.is_success:
                if action == "create":
                    ledger.created.append(response.json()["id"])
                elif action == "delete":
                    ledger.deleted.add(target)
            await server.start()
            http.base_url = server.url  # a new lifetime, a new port
            if action == "delete" and response is None and await _going(http, target, token):
                ledger.deleted.add(target)  # committed before the kill cut its answer off: not a target now
        await converged(http, db, settings, ledger)
        audited = await audit_request_ids(http, admin)
    missing = {rid: what for rid, what in ledger.accepted.items() if rid not in audited}
    assert not missing, f"accepted requests missing from the audit log: {missing}\n" + "\n".join(ledger.log)
    verify = server.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def _database_view(db: Database) -> tuple[list[dict[str, Any]], int, int]:
    async with db.read() as session:
        instances = [
            dict(row._mapping)
            for row in await session.execute(
                text("SELECT id, tenant_id, state, desired_state, generation, replicas FROM instances")
            )
        ]
        open_operations = (
            await session.execute(text("SELECT count(*) FROM operations WHERE state IN ('pending', 'running')"))
        ).scalar_one()
        open_deployments = (
            await session.execute(text("SELECT count(*) FROM deployments WHERE state IN ('pending', 'running')"))
        ).scalar_one()
    return instances, int(open_operations), int(open_deployments)


def _mismatches(instances: list[dict[str, Any]], inventory: list[Any]) -> list[str]:
    problems: list[str] = []
    known = {i["id"]: i for i in instances}
    live = {i["id"]: i for i in instances if i["state"] != "destroyed"}
    for instance in instances:
        if instance["state"] != instance["desired_state"] or instance["state"] not in ("running", "destroyed"):
            problems.append(f"instance {instance['id']} is {instance['state']} (desired {instance['desired_state']})")
    expected = Counter((i["id"], i["generation"], r) for i in live.values() for r in range(i["replicas"]))
    found = Counter((item.instance_id, item.generation, item.replica) for item in inventory if item.kind == "container")
    if found != expected:
        problems.append(f"containers {dict(found)} != database {dict(expected)}")
    for item in inventory:
        if item.kind == "container" and item.state != "running":
            problems.append(f"container {item.name} is {item.state}")
        if item.instance_id is not None and item.instance_id not in known:
            problems.append(f"orphan {item.kind} {item.name} of unknown instance {item.instance_id}")
        if item.kind == "volume" and item.instance_id not in live:
            problems.append(f"stray volume {item.name}")
    networks = Counter(item.tenant_id for item in inventory if item.kind == "network")
    tenants = {i["tenant_id"] for i in live.values()}
    if set(networks) != tenants or any(count != 1 for count in networks.values()):
        problems.append(f"networks of tenants {dict(networks)} != tenants with live instances {tenants}")
    return problems


def _engine_view(cluster_name: str) -> str:
    """What the engine holds of the cluster, for a failure message: each container with its state and
    the networks it is attached to, and each network."""
    engine = docker.from_env(timeout=30)
    label = {"label": f"ctrlplane.cluster={cluster_name}"}
    try:
        lines = [
            f"container {c.name} {c.status} networks="
            f"{sorted((c.attrs.get('NetworkSettings') or {}).get('Networks') or {})}"
            for c in engine.containers.list(all=True, ignore_removed=True, filters=label)
        ]
        lines += [
            f"network {n.name} {n.id[:12]} labels={n.attrs.get('Labels')}" for n in engine.networks.list(filters=label)
        ]
    finally:
        engine.close()
    return "\n".join(lines)


async def converged(http: httpx.AsyncClient, db: Database, settings: Settings, ledger: Ledger) -> None:
    """Wait until operations are terminal and the engine matches the database; fail with the diff."""
    provider = DockerProvider(provider_settings(settings))
    deadline = time.monotonic() + CONVERGE_SECONDS
    problems: list[str] = ["not checked yet"]
    try:
        while time.monotonic() < deadline:
            instances, open_operations, open_deployments = await _database_view(db)
            problems = []
            if open_operations or open_deployments:
                problems.append(f"{open_operations} operations and {open_deployments} deployments not terminal")
            else:
                problems = _mismatches(instances, await provider.inventory())
            if not problems:
                # stable: the same answer a reconcile period later (nothing left half-done)
                await asyncio.sleep(1.5)
                instances, open_operations, open_deployments = await _database_view(db)
                problems = _mismatches(instances, await provider.inventory())
                if not problems and not open_operations and not open_deployments:
                    for instance_id in ledger.created:
                        assert any(i["id"] == instance_id for i in instances), f"accepted {instance_id} is gone"
                    return
            await asyncio.sleep(0.25)
    finally:
        await provider.close()
    instances, _, _ = await _database_view(db)
    async with db.read() as session:
        messages = dict((await session.execute(text("SELECT id, status_message FROM instances"))).tuples().all())
    raise AssertionError(
        f"no convergence in {CONVERGE_SECONDS}s: "
        + "; ".join(problems)
        + "\n"
        + "\n".join(ledger.log)
        + "\ninstances:\n"
        + "\n".join(f"{i} message={messages.get(i['id'])!r}" for i in instances)
        + "\nengine:\n"
        + _engine_view(settings.cluster_name)
    )
