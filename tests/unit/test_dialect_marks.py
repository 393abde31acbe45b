"""The guard of the database axis: a test that depends on the SQL dialect carries
``@pytest.mark.dialects`` and so runs on SQLite and PostgreSQL; every other test runs once, on SQLite.
The rule is in tests/dialect_rule.py."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from tests.dialect_rule import REPORT_ENV, collects_the_whole_suite, findings, reasons

ROOT = Path(__file__).resolve().parents[2]


def _reasons_of(source: str, test: str = "test_it") -> list[str]:
    module = ast.parse(dedent(source))
    [function] = [
        node for node in module.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == test
    ]
    return [reason.split(":")[0] for reason in reasons(function, module)]


def test_the_rule_finds_concurrency_dialect_branches_claims_migrations_and_dialect_sql() -> None:
    assert _reasons_of("async def test_it(api):\n    await asyncio.gather(a(), b())\n") == ["gather"]
    assert _reasons_of("async def test_it(db):\n    if db.dialect == 'sqlite':\n        pass\n") == ["dialect"]
    assert _reasons_of("async def test_it(db):\n    await idempotency.claim(db)\n") == ["claim"]
    assert _reasons_of("async def test_it(db):\n    await migrate(db)\n") == ["migrate"]
    assert _reasons_of("async def test_it(db):\n    await s.execute(text('SELECT pg_notify(1)'))\n") == ["pg_"]
    assert _reasons_of("async def test_it(db):\n    relay = NotifyRelay(dsn)\n") == ["NotifyRelay"]


def test_the_rule_follows_the_modules_helpers_and_fixtures() -> None:
    source = """
        async def race(api):
            return await asyncio.gather(api.get(), api.get())

        async def twice(api):
            return await race(api)

        def hammer(api):
            return race

        async def test_it(api, hammer):
            await twice(api)
    """
    assert _reasons_of(source) == ["gather"]


def test_the_rule_ignores_portable_sql_and_a_variable_called_claim() -> None:
    source = """
        async def test_it(api, db):
            claim = await api.post("/v1/domains", json={"note": "a sink that cannot listen"})
            await s.execute(text("UPDATE instances SET state = 'running' WHERE id = :id"))
            assert claim.status_code == 409
    """
    assert _reasons_of(source) == []


@pytest.fixture(scope="module")
def collected(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What the rule says of every collected test of the suite.

    A session that collected the whole suite (``make test``) already holds every test; any narrower
    one collects the suite again in a subprocess (``pytest --collect-only``; ``--assert=plain``, as
    rewriting the asserts of every module costs more than half of that and the rule reads the source).
    """
    if collects_the_whole_suite(request.config):
        return findings(request.session.items)
    report = tmp_path_factory.mktemp("dialects") / "report.json"
    env = {**os.environ, REPORT_ENV: str(report)}
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.dialect_rule",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--assert=plain",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found: list[dict[str, Any]] = json.loads(report.read_text())
    return found


def test_every_test_that_depends_on_the_dialect_carries_the_mark(collected: list[dict[str, Any]]) -> None:
    missing = [
        f"{found['nodeid']}: {'; '.join(found['reasons'])}"
        for found in collected
        if found["reasons"] and not found["marked"] and not found["pinned"]
    ]
    assert missing == [], "add @pytest.mark.dialects(<why>) to:\n" + "\n".join(missing)
    # The rule does find tests in the suite (the concurrent quota test is one), so it is not vacuous.
    assert any(found["reasons"] and found["marked"] for found in collected)


def test_marked_tests_run_on_both_databases_and_the_others_on_sqlite_only(collected: list[dict[str, Any]]) -> None:
    marked = {found["nodeid"].split("[")[0] for found in collected if found["marked"] and not found["pinned"]}
    both = {
        found["nodeid"].split("[")[0]
        for found in collected
        if found["database"] == "postgres" and found["nodeid"].split("[")[0] in marked
    }
    assert marked and both == marked
    unmarked = [found for found in collected if not found["marked"] and not found["pinned"]]
    assert unmarked and all(found["database"] is None for found in unmarked)
