"""Fixtures: one app per worker, serving each test's own Settings, database and providers; on
SQLite, and on PostgreSQL too where the dialect matters.

The app is built once per xdist worker (``app``: building one registers every handler) and each test
gives it fresh services through ``ctrlplane.app.use_services``: its settings, its database, its
provider registry, a new authenticator, vault, rate limiter and telemetry hub.

The database is an explicit axis. A test that takes ``db`` (directly or through ``settings``,
``app``, ``api``...) runs once, on a fresh SQLite file. A test marked ``@pytest.mark.dialects``
(its behaviour depends on the SQL dialect: locks and ``SKIP LOCKED``, claims, triggers and
``NOTIFY``, advisory locks, migrations, dialect-specific SQL, races on unique constraints) runs
twice: ``[sqlite]`` and ``[postgres]`` on a database of its own. A test may also pin its
database: ``@pytest.mark.parametrize("database_url", [...], indirect=True)`` or a module fixture
``database_url`` that overrides this one (PostgreSQL-only modules). ``tests/dialect_rule.py``
says which tests must carry the mark and ``tests/unit/test_dialect_marks.py`` enforces it.

PostgreSQL is found through ``CTRLPLANE_TEST_POSTGRES_URL`` (default: the local server). Locally,
a missing server skips the PostgreSQL half with a message saying how to enable it; with ``CI``
set it fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ctrlplane.app import build_services, create_app, use_services
from ctrlplane.auth.tokens import issue_token
from ctrlplane.db import Database, connect, migrate
from ctrlplane.models import metadata
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from tests.fakes import FakeProvider
from tests.waiting import eventually

POSTGRES_URL = os.environ.get("CTRLPLANE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


def _share_httpx_default_tls_context() -> None:
    """httpx builds a TLS context (loading certifi's CA bundle, ~15 ms of CPU) for every client, and
    the tests build a couple of thousand (helpers that poll a port with ``httpx.get``, one client per
    request). In the test processes the default one is built once and shared; a client asking for
    anything else (``verify=False``, its own context) gets what it asked for. ctrlplane's own code
    shares one through ``ctrlplane.httpclients``."""
    from httpx._transports import default

    build = default.create_ssl_context
    shared: dict[bool, Any] = {}

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        if trust_env not in shared:
            shared[trust_env] = build(verify=True, cert=None, trust_env=trust_env)
        return shared[trust_env]

    default.create_ssl_context = create_ssl_context  # type: ignore[assignment]


_share_httpx_default_tls_context()


def require_binary(binary: str, what: str) -> str:
    """The path of ``binary`` (a name on PATH or an executable path); skips locally, fails in CI."""
    found = shutil.which(binary) or (binary if os.path.isfile(binary) and os.access(binary, os.X_OK) else None)
    if found is None:
        message = f"{what}: {binary} is not installed"
        if IN_CI:
            pytest.fail(f"CI requires {message}", pytrace=False)
        pytest.skip(message)
    return found


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


async def _recreate_postgres_database(name: str) -> str:
    url = make_url(POSTGRES_URL)
    admin = connect(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        async with admin.engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


async def _migrated(url: str) -> None:
    database = connect(url)
    try:
        await migrate(database)
    finally:
        await database.dispose()


async def _drop_postgres_database(name: str) -> None:
    admin = connect(make_url(POSTGRES_URL).render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        async with admin.engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this run and test worker, dropped at the end."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)[:8]
    name = f"ctrlplane_test_{run}_{_worker()}"
    try:
        url = asyncio.run(_recreate_postgres_database(name))
        asyncio.run(_migrated(url))
    except Exception as exc:  # noqa: BLE001 - any failure means no usable server
        message = (
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(exc).__name__}: {exc}). Start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or point "
            "CTRLPLANE_TEST_POSTGRES_URL at a server."
        )
        if IN_CI:
            pytest.fail("CI requires PostgreSQL: " + message, pytrace=False)
        pytest.skip(message)
    yield url
    asyncio.run(_drop_postgres_database(name))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "ctrlplane.db"
    asyncio.run(_migrated(f"sqlite+aiosqlite:///{path}"))
    return path


DIALECTS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Put a ``dialects``-marked test on both databases (unless it pins ``database_url`` itself)."""
    if "database_url" not in metafunc.fixturenames or metafunc.definition.get_closest_marker("dialects") is None:
        return
    if any("database_url" in _argnames(mark) for mark in metafunc.definition.iter_markers("parametrize")):
        return
    definitions = metafunc._arg2fixturedefs.get("database_url", ())
    if definitions and definitions[-1].func.__module__ != __name__:
        return  # the module chose its database (a PostgreSQL-only module)
    metafunc.parametrize("database_url", DIALECTS, indirect=True)


def _argnames(mark: pytest.Mark) -> list[str]:
    names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
    return [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """SQLite unless the test is parametrized (``dialects`` mark or an explicit indirect parameter).

    The SQLite file has one path per worker (so ``db`` can keep its engine, below), and each test
    gets a new file there: the old one is unlinked (a process a test left behind keeps writing to
    its own inode, not to the next test's) and the migrated template copied in its place."""
    dialect = getattr(request, "param", "sqlite")
    if dialect not in DIALECTS:
        raise ValueError(f"database_url: unknown dialect {dialect!r}; one of {DIALECTS}")
    if dialect == "sqlite":
        target = tmp_path_factory.getbasetemp() / "worker-database" / "ctrlplane.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite+aiosqlite:///{target}"
    return str(request.getfixturevalue("postgres_url"))


# Emptying the worker's PostgreSQL database before each test: DELETE, children first, in one
# statement, not TRUNCATE: on these near-empty tables TRUNCATE (new files for every table and
# index, each fsynced at commit) costs several times as much, and this runs before every
# ``[postgres]`` test. There are no triggers, and neither resets sequences. The commit need not
# wait for its WAL flush: the next test reads through the same server.
_EMPTY_POSTGRES = (
    "DO $$ BEGIN SET LOCAL synchronous_commit = off; "
    + " ".join(f'DELETE FROM "{table.name}";' for table in reversed(metadata.sorted_tables))
    + " END $$"
)


_WORKER_DATABASES: dict[str, Database] = {}
"""This worker's databases by URL, kept from test to test. SQLAlchemy caches compiled statements
per engine (its dialect object is part of the key), so a new engine per test compiled every
statement again: a third of a small API test's CPU. Each test still starts on an empty database
(a fresh SQLite file, ``database_url``; emptied PostgreSQL tables) with an empty, disabled row
cache, and leaves no pooled connection behind (the next test runs in another event loop)."""


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = _WORKER_DATABASES.get(database_url)
    if database is None:
        database = _WORKER_DATABASES[database_url] = connect(database_url)
    else:
        database.rows.reset()  # the listeners on the kept engines write to this one
    if database.dialect == "postgresql":
        async with database.engine.begin() as conn:
            await conn.execute(text(_EMPTY_POSTGRES))
    yield database
    await database.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"),
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        providers=("fake",),
        api_key_touch_seconds=0,
        reconcile_interval_seconds=0.5,
        event_poll_seconds=0.1,
        operation_lease_seconds=5,
        workers=2,
        cluster_name=f"test-{uuid.uuid4().hex[:12]}",
        rate_limits_enabled=False,  # tests poll far faster than a plan allows; test_rate_limits.py turns it on
        router="none",
    )


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def providers(fake: FakeProvider) -> ProviderRegistry:
    return ProviderRegistry([fake])


_WORKER_APPS: dict[int, Litestar] = {}
"""This worker's app, built by the first test that asks for one (keyed by the one setting read when
an app is built, ``max_body_bytes``). Each test then gets it with services of its own."""


def worker_app(settings: Settings, db: Database, providers: ProviderRegistry) -> Litestar:
    """The worker's app, serving ``settings``, ``db`` and ``providers`` from now on (``use_services``).

    Building an app registers every handler (about 0.27 s of CPU), which used to be most of a small
    test's time; services (authenticator, vault, rate limiter, telemetry) are cheap and per test.
    One app serves one set of services at a time: a test that needs two apps side by side (two
    replicas, two servers with other keys) calls ``create_app`` for the second.
    """
    shared = _WORKER_APPS.get(settings.max_body_bytes)
    if shared is None:
        shared = _WORKER_APPS[settings.max_body_bytes] = create_app(settings, providers=providers, db=db)
    else:
        use_services(shared, build_services(settings, providers=providers, db=db))
    return shared


@pytest.fixture
def app(settings: Settings, db: Database, providers: ProviderRegistry) -> Litestar:
    """The worker's app, serving this test's settings, database and providers (``worker_app``)."""
    return worker_app(settings, db, providers)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://ctrlplane.test") as http:
        yield http


@dataclass
class Tokens:
    settings: Settings

    def admin(self, **kwargs: Any) -> str:
        return self.make(subject="root", tenant_id=None, roles=["admin"], **kwargs)

    def tenant(self, tenant_id: str, roles: list[str] | None = None, subject: str = "alice", **kwargs: Any) -> str:
        return self.make(subject=subject, tenant_id=tenant_id, roles=roles or ["admin"], **kwargs)

    def make(
        self, *, subject: str, tenant_id: str | None, roles: list[str], ttl: timedelta = timedelta(hours=1)
    ) -> str:
        return issue_token(self.settings, subject=subject, tenant_id=tenant_id, roles=roles, ttl=ttl)


@pytest.fixture
def tokens(settings: Settings) -> Tokens:
    return Tokens(settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    """Thin helpers over the HTTP API for arranging a test; assertions use the raw client."""

    client: httpx.AsyncClient
    tokens: Tokens

    @property
    def admin_headers(self) -> dict[str, str]:
        return bearer(self.tokens.admin())

    async def create_tenant(self, slug: str, plan: str = "free", name: str | None = None) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/admin/tenants",
            json={"name": name or slug.title(), "slug": slug, "plan": plan},
            headers=self.admin_headers,
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def create_key(self, tenant_id: str, roles: list[str], name: str = "ci") -> dict[str, Any]:
        response = await self.client.post(
            "/v1/keys", json={"name": name, "roles": roles}, headers=bearer(self.tokens.tenant(tenant_id))
        )
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture
def api(client: httpx.AsyncClient, tokens: Tokens) -> Api:
    return Api(client, tokens)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_ambient_ctrlplane_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("CTRLPLANE_") and not name.startswith("CTRLPLANE_TEST_"):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
async def live_server(app: Any) -> AsyncIterator[str]:
    """The app served by uvicorn on a loopback port, with its lifespan (workers, reconciler) running."""
    import uvicorn

    # The server keeps idle connections longer than httpx's 5 s keep-alive expiry: with both at 5 s,
    # a request sent on a connection the server is closing at that moment fails with ReadError.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_keep_alive=60)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, "uvicorn started", timeout=5)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, timeout=15)
    # What is still running once the server is gone, for the report of a test that then hangs in the
    # event loop's shutdown (a task that never finishes when cancelled; seen under heavy load).
    for leftover in asyncio.all_tasks() - {asyncio.current_task()}:
        if not leftover.done():
            print(f"task left after live_server: {leftover!r}", file=sys.stderr)
            leftover.print_stack(limit=8, file=sys.stderr)


@pytest.fixture
async def live(live_server: str, tokens: Tokens) -> AsyncIterator[Api]:
    """Like ``api``, but over real HTTP to ``live_server`` (streaming responses work)."""
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        yield Api(http, tokens)
