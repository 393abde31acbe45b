"""``make bench``, reconciler half: one reconciler pass over ``CTRLPLANE_BENCH_RECONCILE_INSTANCES``
(10,000) running instances, its wall time and its peak Python memory.

The provider is the in-memory fake (tests/fakes.py), every instance provisioned in it, so
``inventory`` and ``status`` answer from memory and the pass measures ctrlplane: reading the
instances, deciding per instance under its row lock, recording what it observed. The database is
a fresh PostgreSQL bench database; the instances are bulk-inserted copies of one made through the
API. The pass runs twice: the first (which also records every instance's endpoints) is the timed
one; the second, steady-state, runs under ``tracemalloc`` for the peak of Python allocations
(tracemalloc slows Python down, so its time is reported apart); the process's peak RSS too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
import tracemalloc
from datetime import timedelta
from typing import Any

import httpx
import msgspec
from sqlalchemy import select, text

from ctrlplane.app import create_app
from ctrlplane.auth.tokens import issue_token
from ctrlplane.db import connect
from ctrlplane.instances.models import Instance
from ctrlplane.logs import configure_logging
from ctrlplane.operations.reconciler import Reconciler
from ctrlplane.operations.spec import spec_for
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from tests.bench_api import JWT_SECRET, WEB, _clone, _pad, bench_database
from tests.fakes import FakeProvider

INSTANCES = int(os.environ.get("CTRLPLANE_BENCH_RECONCILE_INSTANCES", "10000"))


async def _measure(database_url: str, data_dir: str) -> dict[str, Any]:
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        providers=("fake",),
        background=False,
        log_level="warning",
    )
    configure_logging(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    fake = FakeProvider()
    db = connect(database_url)
    app = create_app(settings, providers=ProviderRegistry([fake]), db=db)
    try:
        admin = issue_token(settings, subject="bench", tenant_id=None, roles=["admin"], ttl=timedelta(hours=1))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            tenant = await http.post(
                "/v1/admin/tenants",
                json={"name": "Reconcile", "slug": "reconcile", "plan": "enterprise"},
                headers={"Authorization": f"Bearer {admin}"},
            )
            tenant.raise_for_status()
            token = issue_token(
                settings, subject="bench", tenant_id=tenant.json()["id"], roles=["admin"], ttl=timedelta(hours=1)
            )
            created = await http.post(
                "/v1/instances", json={**WEB, "name": "template"}, headers={"Authorization": f"Bearer {token}"}
            )
            created.raise_for_status()
        async with db.engine.begin() as conn:
            await _clone(
                conn, "instances", "id", created.json()["id"], INSTANCES - 1,
                {"id": _pad("inst_0r", "g"), "name": "'r' || g"},
            )  # fmt: skip
            await conn.execute(text("UPDATE instances SET state = 'running', desired_state = 'running'"))
            await conn.execute(text("UPDATE operations SET state = 'succeeded'"))
            await conn.execute(text("ANALYZE"))
        async with db.read() as session:
            for instance in (await session.execute(select(Instance))).scalars():
                await fake.provision(spec_for(instance, settings=app.state.services.settings))
        reconciler = Reconciler(app.state.services)
        started = time.perf_counter()
        await reconciler.run_once()  # the first pass records every instance's endpoints: all changed
        cold = time.perf_counter() - started
        started = time.perf_counter()
        await reconciler.run_once()
        unchanged = time.perf_counter() - started
        drifted = [f"inst_0r{n:024d}" for n in range(1, INSTANCES, 100)]  # 1%
        for instance_id in drifted:
            fake.crash(instance_id, 0)
        started = time.perf_counter()
        await reconciler.run_once()
        drift = time.perf_counter() - started
        async with db.read() as session:
            restarts = (
                await session.execute(
                    text("SELECT count(*) FROM operations WHERE kind = 'restart' AND state = 'pending'")
                )
            ).scalar_one()
        await db_mark_done(db)
        for instance_id in drifted:
            await fake.restart(instance_id)
        await reconciler.run_once()
        tracemalloc.start()
        started = time.perf_counter()
        await reconciler.run_once()
        traced = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "database": "postgresql",
            "instances": INSTANCES,
            "first_pass_s": cold,
            "pass_s": unchanged,
            "per_instance_ms": unchanged / INSTANCES * 1000,
            "target_unchanged_s": 2.0 * INSTANCES / 10_000,
            "drifted": len(drifted),
            "drifted_pass_s": drift,
            "drifted_restarts_queued": restarts,
            "target_drifted_s": 3.0 * INSTANCES / 10_000,
            "traced_pass_s": traced,
            "peak_traced_mib": peak / 2**20,
            "peak_rss_mib": rss_kib / 1024,
        }
    finally:
        await db.dispose()


async def db_mark_done(db: Any) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE operations SET state = 'succeeded'"))


def run() -> dict[str, Any]:
    import tempfile

    with bench_database() as database_url, tempfile.TemporaryDirectory() as data_dir:
        return asyncio.run(_measure(database_url, data_dir))


if __name__ == "__main__":
    print(msgspec.json.format(msgspec.json.encode(run())).decode())
