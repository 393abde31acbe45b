"""``make bench`` section ``environments``: a get-or-create that claims from a warm pool against a
cold create, each measured from ``POST /v1/environments`` to the first 200 from the app through
the router (a real Caddy on loopback ports, a real Docker engine), p50 and p99 over
``CTRLPLANE_BENCH_ROUNDS`` rounds; and the claim's answer alone (target: p50 <= 50 ms).

Wake-on-request against ``docker start`` is the ``router`` section's (tests/bench_router.py).
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import httpx

from tests.bench import ROUNDS, _free_port, _until_http
from tests.network.processes import Caddy
from tests.providers.docker_engine import HTTP_PORT, IMAGE, ensure_image, remove_cluster

POOL = 3
SPEC = {"image": IMAGE, "ports": [{"container_port": HTTP_PORT}], "resources": {"cpu_millis": 100, "memory_mb": 32}}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _served(caddy: Caddy, hostname: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=caddy.http_url, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/", headers={"Host": hostname}).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.005)
    raise TimeoutError(f"{hostname} never answered 200 through the router")


def _pool_ready(api: httpx.Client, caddy: Caddy, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = api.get("/v1/environments", params={"state": "pooled"}).json()["items"]
        running = [e for e in items if e["instance_state"] == "running"]
        if len(running) >= POOL:
            for member in running:
                _served(caddy, member["hostname"])
            return
        time.sleep(0.1)
    raise TimeoutError("the pool never refilled")


def _round(api: httpx.Client, caddy: Caddy, key: str, template: str) -> tuple[float, float]:
    """(seconds to the API's answer, seconds to the first 200 through the router)."""
    started = time.monotonic()
    response = api.post("/v1/environments", json={"key": key, "template": template})
    response.raise_for_status()
    answered = time.monotonic() - started
    _served(caddy, response.json()["hostname"])
    return answered, time.monotonic() - started


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(values) * 1000, "p99_ms": _percentile(values, 0.99) * 1000}


def run() -> dict[str, Any]:
    client = docker.from_env()
    ensure_image(client)
    cluster = f"bench-envs-{os.getpid()}"
    with tempfile.TemporaryDirectory() as data_dir:
        caddy = Caddy(Path(data_dir) / "caddy")
        caddy.start()
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")},
            "CTRLPLANE_DATA_DIR": data_dir,
            "CTRLPLANE_PORT": str(port),
            "CTRLPLANE_LOG_LEVEL": "warning",
            "CTRLPLANE_CLUSTER_NAME": cluster,
            "CTRLPLANE_RECONCILE_INTERVAL_SECONDS": "0.5",
            "CTRLPLANE_ROUTER_ADMIN_ADDRESS": caddy.admin_address,
            "CTRLPLANE_ROUTER_HTTP_LISTEN": f"127.0.0.1:{caddy.http_port}",
            "CTRLPLANE_ROUTER_HTTPS_LISTEN": f"127.0.0.1:{caddy.https_port}",
        }
        server = subprocess.Popen([sys.executable, "-m", "ctrlplane.cli", "serve"], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            _until_http(lambda: f"{base}/readyz")
            cli = [sys.executable, "-m", "ctrlplane.cli", "token", "issue"]
            admin = subprocess.run([*cli, "--admin"], env=env, capture_output=True, text=True, check=True)
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin.stdout.strip()}"}) as api:
                tenant = api.post("/v1/admin/tenants", json={"name": "Bench", "slug": "bench", "plan": "enterprise"})
                tenant.raise_for_status()
            token = subprocess.run(
                [*cli, "--tenant", tenant.json()["id"]], env=env, capture_output=True, text=True, check=True
            ).stdout.strip()
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
                for name, pool in (("pooled", {"min_ready": POOL, "max_ready": POOL}), ("cold", {})):
                    api.post("/v1/templates", json={"name": name, "spec": SPEC, "pool": pool}).raise_for_status()
                claim_answer, claim_first, cold_answer, cold_first = [], [], [], []
                for index in range(ROUNDS):
                    _pool_ready(api, caddy)
                    answered, first = _round(api, caddy, f"claim-{index}", "pooled")
                    claim_answer.append(answered)
                    claim_first.append(first)
                    answered, first = _round(api, caddy, f"cold-{index}", "cold")
                    cold_answer.append(answered)
                    cold_first.append(first)
        finally:
            server.terminate()
            server.wait(timeout=30)
            caddy.stop()
            remove_cluster(client, cluster)
    results = {
        "rounds": ROUNDS,
        "pool_claim_answer": _summary(claim_answer),
        "pool_claim_first_answer": _summary(claim_first),
        "cold_create_answer": _summary(cold_answer),
        "cold_create_first_answer": _summary(cold_first),
        "target": "pool claim answer p50 <= 50 ms",
    }
    for name in ("pool_claim_answer", "pool_claim_first_answer", "cold_create_answer", "cold_create_first_answer"):
        print(f"{name:<28} p50 {results[name]['p50_ms']:8.1f} ms  p99 {results[name]['p99_ms']:8.1f} ms")
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
