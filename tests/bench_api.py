"""``make bench``, API half: request rates against a bare handler, and latency at scale.

* **http** — authenticated ``GET /v1/instances/{id}`` and ``GET /v1/instances?limit=20`` at 32
  concurrent connections (``wrk``: Debian's ``wrk``), against bare Litestar handlers that return
  the same JSON bytes from memory, mounted under ``/bench/bare/`` on the same app in the same
  server process (outside ``/v1``, so no auth and no database: what the framework alone costs).
* **scale** — on PostgreSQL, the same tenant (``CTRLPLANE_BENCH_TENANT_INSTANCES`` = 1,000
  instances) measured while the installation holds ``CTRLPLANE_BENCH_SMALL_INSTANCES`` = 1,000
  instances and again at ``CTRLPLANE_BENCH_SCALE_INSTANCES`` = 100,000 across
  ``CTRLPLANE_BENCH_SCALE_TENANTS`` = 1,000 tenants (the others inserted directly with bulk
  ``INSERT … SELECT … generate_series``, not through the API): GET one, list page 1 (limit 20),
  list page 500 (limit 2, its cursor found by walking the pages), create; p50 and p99 of
  ``CTRLPLANE_BENCH_SAMPLES`` sequential requests each, and the ratio.

The server is this module run as ``python -m tests.bench_api serve``: ``create_app`` with the
in-memory fake provider (so a create measures ctrlplane, not Docker), background loops off (the
reconciler would otherwise chase 100,000 instances that the fake never ran), on a fresh database.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
from litestar import Response, get
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ctrlplane.db import connect, migrate

POSTGRES_URL = os.environ.get("CTRLPLANE_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
JWT_SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
HTTP_SECONDS = int(os.environ.get("CTRLPLANE_BENCH_HTTP_SECONDS", "8"))
CONNECTIONS = int(os.environ.get("CTRLPLANE_BENCH_CONNECTIONS", "32"))
SAMPLES = int(os.environ.get("CTRLPLANE_BENCH_SAMPLES", "200"))
TENANT_INSTANCES = int(os.environ.get("CTRLPLANE_BENCH_TENANT_INSTANCES", "1000"))
SMALL_INSTANCES = int(os.environ.get("CTRLPLANE_BENCH_SMALL_INSTANCES", "1000"))
SCALE_INSTANCES = int(os.environ.get("CTRLPLANE_BENCH_SCALE_INSTANCES", "100000"))
SCALE_TENANTS = int(os.environ.get("CTRLPLANE_BENCH_SCALE_TENANTS", "1000"))
HTTP_DATABASES = tuple(
    d.strip() for d in os.environ.get("CTRLPLANE_BENCH_HTTP_DATABASES", "postgresql,sqlite").split(",") if d.strip()
)
DEEP_PAGE, DEEP_LIMIT = 500, 2
UNLIMITED = '{"enterprise": {"tenant_per_minute": 1000000000, "tenant_burst": 1000000000, ' + (
    '"credential_per_minute": 1000000000, "credential_burst": 1000000000}, "free": {"tenant_per_minute": 600, '
    '"tenant_burst": 300, "credential_per_minute": 300, "credential_burst": 150}}'
)
"""The bench tenant's plan: rate limits on (every request pays for its tokens) but too large to
refuse any of wrk's requests."""
WEB = {"image": "bench/web:1", "ports": [{"container_port": 8080}], "resources": {"cpu_millis": 100, "memory_mb": 32}}


# --- the server --------------------------------------------------------------------------------


_BODIES: dict[str, bytes] = {}


def _body(name: str) -> bytes:
    if name not in _BODIES:
        _BODIES[name] = (Path(os.environ["CTRLPLANE_BENCH_BODIES"]) / f"{name}.json").read_bytes()
    return _BODIES[name]


@get("/bench/bare/one", include_in_schema=False, sync_to_thread=False)
def bare_one() -> Response[bytes]:
    """The JSON of ``GET /v1/instances/{id}``, from memory: the framework's floor."""
    return Response(_body("one"), media_type="application/json")


@get("/bench/bare/list", include_in_schema=False, sync_to_thread=False)
def bare_list() -> Response[bytes]:
    """The JSON of ``GET /v1/instances?limit=20``, from memory."""
    return Response(_body("list"), media_type="application/json")


@get("/bench/bare/one", include_in_schema=False, sync_to_thread=False)
def separate_one() -> Any:
    """An instance-shaped document (the JSON of ``GET /v1/instances/{id}``, decoded once), encoded
    by the framework on every request: the separate bare app's single GET."""
    return _decoded("one")


@get("/bench/bare/list", include_in_schema=False, sync_to_thread=False)
def separate_list() -> Any:
    """The page of 20 (``GET /v1/instances?limit=20``), decoded once, encoded per request."""
    return _decoded("list")


_DECODED: dict[str, Any] = {}


def _decoded(name: str) -> Any:
    if name not in _DECODED:
        _DECODED[name] = msgspec.json.decode(_body(name))
    return _DECODED[name]


def _run_server(app: Any, port: int) -> None:
    """Under the server and options ``ctrlplane serve`` uses (ctrlplane/cli.py)."""
    import uvicorn

    from ctrlplane.serving import settle_heap

    settle_heap()

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="httptools",
    )


def serve_bare() -> int:
    """The separate bare app: Litestar with the two handlers above and nothing of ctrlplane (no
    middleware, no database), served like the product; the baseline of the http section."""
    from litestar import Litestar

    _run_server(Litestar([separate_one, separate_list], openapi_config=None), int(os.environ["CTRLPLANE_PORT"]))
    return 0


def serve() -> int:
    """The bench server: the product's app, plus the bare handlers under /bench/bare/ (bench only)."""

    from ctrlplane.app import create_app
    from ctrlplane.logs import configure_logging
    from ctrlplane.provisioning.registry import ProviderRegistry
    from ctrlplane.settings import Settings
    from tests.fakes import FakeProvider

    settings = Settings.from_env()
    configure_logging(settings)
    app = create_app(settings, providers=ProviderRegistry([FakeProvider()]))
    app.register(bare_one)
    app.register(bare_list)
    _run_server(app, settings.port)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bench_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of this run, dropped afterwards."""
    name = f"ctrlplane_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_url = make_url(POSTGRES_URL).render_as_string(hide_password=False)
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    async def admin(statement: str) -> None:
        database = connect(admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with database.engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await database.dispose()

    async def migrated() -> None:
        database = connect(url)
        try:
            await migrate(database)
        finally:
            await database.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(migrated())
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def bare_server(bodies: Path) -> Iterator[str]:
    """The separate bare app as its own process (``serve-bare``)."""
    port = _free_port()
    env = {**os.environ, "CTRLPLANE_PORT": str(port), "CTRLPLANE_BENCH_BODIES": str(bodies)}
    process = subprocess.Popen([sys.executable, "-m", "tests.bench_api", "serve-bare"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{base}/bench/bare/one", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("the bare bench server did not become ready")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def bench_server(database_url: str, bodies: Path) -> Iterator[str]:
    port = _free_port()
    data_dir = tempfile.mkdtemp(prefix="ctrlplane-bench-")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")},
        "CTRLPLANE_DATABASE_URL": database_url,
        "CTRLPLANE_DATA_DIR": data_dir,
        "CTRLPLANE_PORT": str(port),
        "CTRLPLANE_JWT_SECRET": JWT_SECRET,
        "CTRLPLANE_LOG_LEVEL": "warning",
        "CTRLPLANE_BACKGROUND": "false",
        "CTRLPLANE_PROVIDERS": "fake",
        "CTRLPLANE_BENCH_BODIES": str(bodies),
        "CTRLPLANE_RATE_LIMITS": UNLIMITED,
    }
    process = subprocess.Popen([sys.executable, "-m", "tests.bench_api", "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("the bench server did not become ready")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def _token(tenant_id: str | None) -> str:
    from ctrlplane.auth.tokens import issue_token
    from ctrlplane.settings import Settings

    settings = Settings(jwt_secret=JWT_SECRET)
    return issue_token(settings, subject="bench", tenant_id=tenant_id, roles=["admin"], ttl=timedelta(hours=6))


# --- bulk data ---------------------------------------------------------------------------------


async def _clone(conn: Any, table: str, key: str, template: str, count: int, overrides: dict[str, str]) -> None:
    """``count`` copies of one row of ``table`` (``key = template``), with SQL expressions over
    ``g`` (1..count) for the columns in ``overrides``: one INSERT … SELECT, no round trip per row."""
    if count <= 0:
        return
    columns = [
        row[0]
        for row in await conn.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = :t ORDER BY ordinal_position"),
            {"t": table},
        )
    ]
    exprs = [overrides.get(column, f't."{column}"') for column in columns]
    names = ", ".join(f'"{column}"' for column in columns)
    await conn.execute(
        text(
            f'INSERT INTO "{table}" ({names}) SELECT {", ".join(exprs)} '
            f'FROM "{table}" t, generate_series(1, :n) g WHERE t."{key}" = :template'
        ),
        {"n": count, "template": template},
    )


def _pad(prefix: str, expr: str) -> str:
    return f"'{prefix}' || lpad(({expr})::text, 24, '0')"


async def _fill(
    database_url: str, tenant_id: str, template: str, *, tenant_rows: int, others: int, tenants: int
) -> None:
    database = connect(database_url)
    try:
        async with database.engine.begin() as conn:
            await _clone(
                conn, "instances", "id", template, tenant_rows,
                {"id": _pad("inst_0a", "g"), "name": "'b' || g"},
            )  # fmt: skip
            if others > 0 and tenants > 1:
                await _clone(
                    conn, "tenants", "id", tenant_id, tenants - 1,
                    {"id": _pad("ten_0b", "g"), "slug": "'bench-' || g", "name": "'Bench ' || g"},
                )  # fmt: skip
                await _clone(
                    conn, "tenant_quotas", "tenant_id", tenant_id, tenants - 1, {"tenant_id": _pad("ten_0b", "g")}
                )
                await _clone(
                    conn, "instances", "id", template, others,
                    {
                        "id": _pad("inst_0b", "g"),
                        "name": "'o' || g",
                        "tenant_id": _pad("ten_0b", f"1 + g % {tenants - 1}"),
                    },
                )  # fmt: skip
        # committed: an ANALYZE in a transaction that is rolled back (``connect()`` without a
        # commit) leaves the planner the statistics of the empty table
        async with database.engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    finally:
        await database.dispose()


async def _count(database_url: str, statement: str) -> int:
    database = connect(database_url)
    try:
        async with database.engine.connect() as conn:
            return int((await conn.execute(text(statement))).scalar_one())
    finally:
        await database.dispose()


async def _explain(database_url: str, tenant_id: str) -> str:
    """The plan of the list query as the app issues it (page 1 of 20: the page, the tenant's slug and
    the total in one statement, ``InstanceRepository.listing``)."""
    from ctrlplane.instances.repository import InstanceRepository

    database = connect(database_url)
    try:
        async with database.engine.connect() as conn:
            listing, params = InstanceRepository(None, tenant_id).listing(  # type: ignore[arg-type]
                state=None, labels={}, provider=None, name=None, include_destroyed=False
            )
            page = listing.first.params(**params, page_limit=21)
            sql = page.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            rows = await conn.execute(text(f"EXPLAIN ANALYZE {sql}"))
            return "\n".join(str(row[0]) for row in rows)
    finally:
        await database.dispose()


# --- measuring ---------------------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if match is None:
        raise RuntimeError(f"wrk printed a latency this bench cannot read: {value!r}")
    return float(match.group(1)) * _UNIT[match.group(2)]


def wrk(url: str, token: str | None) -> dict[str, float]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("make bench needs wrk: apt-get install -y wrk")
    command = [binary, "-t2", f"-c{CONNECTIONS}", f"-d{HTTP_SECONDS}s", "--timeout", "10s", "--latency"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors for {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # the latency distribution's own lines: a "+/- Stdev" column can end in "50%" too
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    return {"requests_per_s": rate, "p50_ms": p50, "p99_ms": p99}


def _percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": statistics.median(samples) * 1000, "p99_ms": cuts[98] * 1000, "samples": len(samples)}


def _timed(call: Callable[[], httpx.Response], expect: int) -> dict[str, float]:
    samples = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        response = call()
        samples.append(time.perf_counter() - started)
        if response.status_code != expect:
            raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return _percentiles(samples)


def latencies(api: httpx.Client, instance_id: str, label: str) -> dict[str, dict[str, float]]:
    for _ in range(20):  # warm the connection and the server's caches
        api.get(f"/v1/instances/{instance_id}")
    cursor, started = None, time.perf_counter()
    for _ in range(DEEP_PAGE - 1):
        page = api.get("/v1/instances", params={"limit": DEEP_LIMIT, **({"cursor": cursor} if cursor else {})})
        cursor = page.json()["next_cursor"]
        if cursor is None:
            raise RuntimeError(f"fewer than {DEEP_PAGE} pages of {DEEP_LIMIT}")
    walk = time.perf_counter() - started
    counter = iter(range(10**9))
    result = {
        "get_one": _timed(lambda: api.get(f"/v1/instances/{instance_id}"), 200),
        "list_page_1": _timed(lambda: api.get("/v1/instances", params={"limit": 20}), 200),
        f"list_page_{DEEP_PAGE}": _timed(
            lambda: api.get("/v1/instances", params={"limit": DEEP_LIMIT, "cursor": cursor}), 200
        ),
        "create": _timed(lambda: api.post("/v1/instances", json={**WEB, "name": f"{label}{next(counter)}"}), 201),
    }
    result[f"list_page_{DEEP_PAGE}"]["walk_s"] = walk
    return result


@contextmanager
def _bench_tenant(base: str) -> Iterator[tuple[httpx.Client, str, str]]:
    """A tenant on the enterprise plan with quotas out of the way; its API client, id and token."""
    admin = {"Authorization": f"Bearer {_token(None)}"}
    with httpx.Client(base_url=base, headers=admin, timeout=60) as http:
        tenant = http.post("/v1/admin/tenants", json={"name": "Bench", "slug": "bench", "plan": "enterprise"})
        tenant.raise_for_status()
        tenant_id = tenant.json()["id"]
        big = 10_000_000
        quota = {k: big for k in ("max_instances", "max_cpu_millis", "max_memory_mb")}
        quota |= {"max_domains": 10, "max_routes": 10, "max_secrets": 10}
        http.put(f"/v1/admin/tenants/{tenant_id}/quota", json=quota).raise_for_status()
    token = _token(tenant_id)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
        yield api, tenant_id, token


@contextmanager
def _sqlite_database() -> Iterator[str]:
    """A fresh, migrated SQLite file of this run (the ``make run`` default), removed afterwards."""
    directory = tempfile.mkdtemp(prefix="ctrlplane-bench-sqlite-")
    url = f"sqlite+aiosqlite:///{directory}/ctrlplane.db"

    async def migrated() -> None:
        database = connect(url)
        try:
            await migrate(database)
        finally:
            await database.dispose()

    try:
        asyncio.run(migrated())
        yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _ratio(results: dict[str, Any], name: str, bare: str) -> None:
    results[f"{name}_ratio"] = results[name]["requests_per_s"] / results[bare]["requests_per_s"]


def rates(database: str) -> dict[str, Any]:
    """Request rates of the authenticated GETs against the bare handlers, on one database
    (``postgresql`` or ``sqlite``), each pair measured back to back on the same server."""
    bodies = Path(tempfile.mkdtemp(prefix="ctrlplane-bench-bodies-"))
    opened = bench_database() if database == "postgresql" else _sqlite_database()
    try:
        with (
            opened as database_url,
            bench_server(database_url, bodies) as base,
            _bench_tenant(base) as (
                api,
                _tenant_id,
                token,
            ),
        ):
            template = api.post("/v1/instances", json={**WEB, "name": "template"})
            template.raise_for_status()
            instance_id = template.json()["id"]
            for index in range(1, 20):
                api.post("/v1/instances", json={**WEB, "name": f"web{index}"}).raise_for_status()
            key = api.post("/v1/keys", json={"name": "bench", "roles": ["read"]})
            key.raise_for_status()
            (bodies / "one.json").write_bytes(api.get(f"/v1/instances/{instance_id}").content)
            (bodies / "list.json").write_bytes(api.get("/v1/instances", params={"limit": 20}).content)
            url = f"{base}/v1/instances/{instance_id}"
            with bare_server(bodies) as bare:
                results: dict[str, Any] = {
                    "database": database,
                    "get_one": wrk(url, token),
                    "get_one_bare": wrk(f"{bare}/bench/bare/one", None),
                    "get_one_bare_in_app": wrk(f"{base}/bench/bare/one", None),
                    "get_one_api_key": wrk(url, key.json()["key"]),
                    "list_20": wrk(f"{base}/v1/instances?limit=20", token),
                    "list_20_bare": wrk(f"{bare}/bench/bare/list", None),
                    "list_20_bare_in_app": wrk(f"{base}/bench/bare/list", None),
                }
            for name, bare_name in (
                ("get_one", "get_one_bare"),
                ("get_one_api_key", "get_one_bare"),
                ("list_20", "list_20_bare"),
            ):
                _ratio(results, name, bare_name)
                results[f"{name}_in_app_ratio"] = (
                    results[name]["requests_per_s"] / results[f"{bare_name}_in_app"]["requests_per_s"]
                )
            results["targets"] = {"get_one": 0.5, "get_one_api_key": 0.5, "list_20": 0.35}
            return results
    finally:
        shutil.rmtree(bodies, ignore_errors=True)


def scale() -> dict[str, Any]:
    """Latency of GET one, list page 1, list page 500 and create at 1,000 and at 100,000 instances
    on PostgreSQL; the results as a dict."""
    bodies = Path(tempfile.mkdtemp(prefix="ctrlplane-bench-bodies-"))
    try:
        with (
            bench_database() as database_url,
            bench_server(database_url, bodies) as base,
            _bench_tenant(base) as (
                api,
                tenant_id,
                _token_value,
            ),
        ):
            template = api.post("/v1/instances", json={**WEB, "name": "template"})
            template.raise_for_status()
            instance_id = template.json()["id"]
            asyncio.run(
                _fill(database_url, tenant_id, instance_id, tenant_rows=TENANT_INSTANCES - 1, others=0, tenants=1)
            )
            filler = max(0, SMALL_INSTANCES - TENANT_INSTANCES)
            if filler:
                asyncio.run(_fill(database_url, tenant_id, instance_id, tenant_rows=0, others=filler, tenants=2))
            small_total = asyncio.run(_count(database_url, "SELECT count(*) FROM instances"))
            small = latencies(api, instance_id, "s")
            plan_small = asyncio.run(_explain(database_url, tenant_id))

            grow = SCALE_INSTANCES - asyncio.run(_count(database_url, "SELECT count(*) FROM instances"))
            started = time.perf_counter()
            asyncio.run(_fill(database_url, tenant_id, instance_id, tenant_rows=0, others=grow, tenants=SCALE_TENANTS))
            insert_s = time.perf_counter() - started
            large_total = asyncio.run(_count(database_url, "SELECT count(*) FROM instances"))
            large_tenants = asyncio.run(_count(database_url, "SELECT count(*) FROM tenants"))
            large = latencies(api, instance_id, "l")
            plan_large = asyncio.run(_explain(database_url, tenant_id))
        ratios = {name: {q: large[name][q] / small[name][q] for q in ("p50_ms", "p99_ms")} for name in small}
        return {
            "database": "postgresql",
            "tenant_instances": TENANT_INSTANCES,
            "small": {"instances": small_total, **small},
            "large": {"instances": large_total, "tenants": large_tenants, "bulk_insert_s": insert_s, **large},
            "ratio": ratios,
            "explain_list_small": plan_small,
            "explain_list_large": plan_large,
        }
    finally:
        shutil.rmtree(bodies, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        raise SystemExit(serve())
    if sys.argv[1:] == ["serve-bare"]:
        raise SystemExit(serve_bare())
    import json

    print(json.dumps({"http": {db: rates(db) for db in HTTP_DATABASES}, "scale": scale()}, indent=2))
