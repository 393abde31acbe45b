"""Where a warm-pool claim spends its time: ``python -m tests.profile_claim [sqlite|postgresql]``.

The in-process app (fake provider, no background loops) on a fresh database: a tenant, a pooled
template; the lifetime keeper fills the pool (untimed), then ``POST /v1/environments`` claims
members one by one through the ASGI interface. Prints the mean and median time per claim and the
database work per claim (statements, BEGIN/COMMIT, checkouts, counted with SQLAlchemy events as
``tests/profile_request.py`` does); ``CTRLPLANE_PROFILE_PYINSTRUMENT=1`` adds a pyinstrument profile.
A development tool, not a test; docs/benchmarks.md quotes what it found.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter

import httpx

from ctrlplane.db import connect, migrate
from ctrlplane.settings import Settings
from tests.bench_api import JWT_SECRET
from tests.profile_request import BIG, Counts, _database

POOL = 20
BATCHES = int(os.environ.get("CTRLPLANE_PROFILE_BATCHES", "5"))


async def _profile(kind: str, url: str) -> None:
    from ctrlplane.app import create_app
    from ctrlplane.environments.lifetimes import LifetimeKeeper
    from ctrlplane.logs import configure_logging
    from ctrlplane.provisioning.registry import ProviderRegistry
    from tests.bench_api import _token
    from tests.fakes import FakeProvider

    if kind == "sqlite":
        migrated = connect(url)
        await migrate(migrated)
        await migrated.dispose()
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            data_dir=data_dir,
            database_url=url,
            jwt_secret=JWT_SECRET,
            providers=("fake",),
            background=False,
            router="none",
            log_level="warning",
            rate_limits={"free": BIG, "enterprise": BIG},
        )
        configure_logging(settings)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        app = create_app(settings, providers=ProviderRegistry([FakeProvider()]))
        transport = httpx.ASGITransport(app=app)
        async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            admin = {"Authorization": f"Bearer {_token(None)}"}
            tenant = await http.post(
                "/v1/admin/tenants", json={"name": "B", "slug": "b", "plan": "enterprise"}, headers=admin
            )
            tenant_id = tenant.json()["id"]
            quota = f"/v1/admin/tenants/{tenant_id}/quota"
            limits = (await http.get(quota, headers=admin)).json()["limits"]
            big = {**limits, "max_instances": 10_000, "max_cpu_millis": 10**7, "max_memory_mb": 10**7}
            (await http.put(quota, json=big, headers=admin)).raise_for_status()
            jwt = {"Authorization": f"Bearer {_token(tenant_id)}"}
            template = {
                "name": "pooled",
                "spec": {"image": "bench/web:1", "ports": [{"container_port": 8080}]},
                "pool": {"min_ready": POOL, "max_ready": POOL},
            }
            (await http.post("/v1/templates", json=template, headers=jwt)).raise_for_status()
            services = app.state.services
            keeper = LifetimeKeeper(services)
            database = services.db
            counts = Counts(database.engine, getattr(database, "query_engine", database.engine))
            profiler = None
            if os.environ.get("CTRLPLANE_PROFILE_PYINSTRUMENT"):
                from pyinstrument import Profiler

                profiler = Profiler(async_mode="enabled", interval=0.0002)
            times: list[float] = []
            per_claim: Counter[str] = Counter()
            for batch in range(BATCHES):
                await keeper.run_once()
                counted = batch > 0
                if counted and profiler is not None:
                    profiler.start()
                for index in range(POOL):
                    key = f"claim-{batch}-{index}"
                    before = Counter(counts.counts)
                    started = time.perf_counter()
                    response = await http.post("/v1/environments", json={"key": key, "template": "pooled"}, headers=jwt)
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 201, response.text
                    if counted:
                        times.append(elapsed)
                        per_claim.update(counts.counts - before)
                if counted and profiler is not None:
                    profiler.stop()
            claims = len(times)
            print(
                f"\n{kind}: {claims} claims, mean {statistics.mean(times) * 1000:.2f} ms, "
                f"p50 {statistics.median(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms"
            )
            for name, count in sorted(per_claim.items(), key=lambda item: -item[1]):
                print(f"  {count / claims:6.2f} per claim  {name}")
            if profiler is not None:
                print(profiler.output_text(unicode=False, color=False, show_all=False))


def main(argv: list[str] | None = None) -> int:
    kinds = (argv if argv is not None else sys.argv[1:]) or ["sqlite", "postgresql"]
    for kind in kinds:
        with _database(kind) as url:
            asyncio.run(_profile(kind, url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
