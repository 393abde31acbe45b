"""Where one authenticated GET spends its time: ``python -m tests.profile_request [sqlite|postgresql]``.

Builds the app in-process (fake provider, no background loops) on a fresh database, creates a
tenant and 20 instances, then drives ``GET /v1/instances/{id}`` (JWT, and API key) and ``GET
/v1/instances?limit=20`` (JWT) straight through the ASGI interface (no HTTP client, no socket),
and prints per request:

* the database work, counted with SQLAlchemy events: pool checkouts, pings, BEGINs, statements
  and COMMIT/ROLLBACKs (on asyncpg each is a round trip once its prepared statement is cached;
  on aiosqlite each is at least one hop to the connection's thread);
* the mean time per request over ``CTRLPLANE_PROFILE_REQUESTS`` sequential requests;
* with ``CTRLPLANE_PROFILE_PYINSTRUMENT`` (and pyinstrument installed), a pyinstrument profile of
  the loop: ``1`` for every case, or some of ``jwt,key,list`` (comma-separated).

A development tool, not a test; docs/benchmarks.md quotes what it found.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from ctrlplane.db import connect, migrate
from ctrlplane.settings import PlanRateLimit, Settings
from tests.asgi import asgi_get
from tests.bench_api import JWT_SECRET, bench_database

REQUESTS = int(os.environ.get("CTRLPLANE_PROFILE_REQUESTS", "2000"))
BIG = PlanRateLimit(tenant_per_minute=10**9, tenant_burst=10**9, credential_per_minute=10**9, credential_burst=10**9)


@contextmanager
def _database(kind: str) -> Iterator[str]:
    if kind == "postgresql":
        with bench_database() as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'ctrlplane.db'}"
        yield url


class Counts:
    def __init__(self, *engines: Any) -> None:
        self.counts: Counter[str] = Counter()
        for engine in dict.fromkeys(engines):
            self._listen(engine)

    def _listen(self, engine: Any) -> None:
        sync = engine.sync_engine
        event.listen(sync, "checkout", lambda *_: self.counts.update(["checkout"]))
        event.listen(sync, "begin", lambda *_: self.counts.update(["begin"]))
        event.listen(sync, "commit", lambda *_: self.counts.update(["commit"]))
        event.listen(sync, "rollback", lambda *_: self.counts.update(["rollback"]))
        event.listen(sync, "before_cursor_execute", self._statement)
        dialect = sync.dialect
        ping = dialect.do_ping

        def counted_ping(dbapi_connection: Any) -> bool:
            self.counts.update(["ping"])
            return bool(ping(dbapi_connection))

        dialect.do_ping = counted_ping  # type: ignore[method-assign]

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.counts.update(["statement"])
        self.counts.update([" ".join(statement.split())[:90]])


async def _profile(kind: str, url: str) -> None:
    from ctrlplane.app import create_app
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
        app = create_app(settings, providers=ProviderRegistry([FakeProvider()]))
        transport = httpx.ASGITransport(app=app)
        async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            admin = {"Authorization": f"Bearer {_token(None)}"}
            tenant = await http.post(
                "/v1/admin/tenants", json={"name": "B", "slug": "b", "plan": "enterprise"}, headers=admin
            )
            tenant_id = tenant.json()["id"]
            jwt = f"Bearer {_token(tenant_id)}"
            bearer_jwt = {"Authorization": jwt}
            created = await http.post(
                "/v1/instances", json={"name": "web", "image": "bench/web:1"}, headers={"Authorization": jwt}
            )
            instance_id = created.json()["id"]
            for index in range(1, 20):
                more = await http.post(
                    "/v1/instances", json={"name": f"web{index}", "image": "bench/web:1"}, headers=bearer_jwt
                )
                assert more.status_code == 201, more.text
            key = await http.post("/v1/keys", json={"name": "ci", "roles": ["read"]}, headers={"Authorization": jwt})
            by_key = f"Bearer {key.json()['key']}"
            path = f"/v1/instances/{instance_id}"
            database = app.state.services.db
            counts = Counts(database.engine, getattr(database, "query_engine", database.engine))
            wanted = os.environ.get("CTRLPLANE_PROFILE_PYINSTRUMENT", "")
            cases = (("jwt", path, "a JWT", jwt), ("key", path, "an API key", by_key))
            cases += (("list", "/v1/instances?limit=20", "a JWT", jwt),)
            for name, target, label, authorization in cases:
                for _ in range(50):
                    assert await asgi_get(app, target, authorization) == 200
                counts.counts.clear()
                profiler = None
                if wanted == "1" or name in wanted.split(","):
                    from pyinstrument import Profiler

                    profiler = Profiler(async_mode="enabled", interval=0.0002)
                    profiler.start()
                started = time.perf_counter()
                for _ in range(REQUESTS):
                    await asgi_get(app, target, authorization)
                elapsed = time.perf_counter() - started
                if profiler is not None:
                    profiler.stop()
                print(f"\n{kind}, GET {target} with {label}: {elapsed / REQUESTS * 1e6:.0f} us per request")
                for counted, count in sorted(counts.counts.items(), key=lambda item: -item[1]):
                    print(f"  {count / REQUESTS:6.2f} per request  {counted}")
                if profiler is not None:
                    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> int:
    kinds = sys.argv[1:] or ["sqlite", "postgresql"]
    for kind in kinds:
        with _database(kind) as url:
            asyncio.run(_profile(kind, url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
