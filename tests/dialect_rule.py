"""Which tests must run on both databases: the rule behind ``@pytest.mark.dialects``.

A test that gets its database from the shared fixtures (``database_url`` of tests/conftest.py in its
fixture closure) runs on SQLite only unless it carries ``@pytest.mark.dialects`` (on the function,
its class or the module's ``pytestmark``). It MUST carry the mark when its own code (the test
function, and the module-level functions and fixtures of its module it calls or requests, followed
transitively) does one of these:

* **branches on the dialect**: reads ``.dialect``, or builds an asyncpg DSN (``asyncpg_dsn``);
* **runs work concurrently** (``asyncio.gather``, ``TaskGroup``): concurrent requests meet row
  locks, ``SKIP LOCKED`` claims and unique constraints, which SQLite serialises and PostgreSQL
  does not;
* **uses the cross-replica machinery**: ``NotifyRelay``, ``LeaderElection``, ``pg_notify``, the
  row cache's ``ROWS_CHANNEL`` (triggers and ``LISTEN/NOTIFY``, advisory locks);
* **runs migrations**: ``migrate``, ``downgrade``, Alembic;
* **claims or locks rows itself**: ``claim_next_operation``, ``.claim(...)``, ``with_for_update``,
  ``skip_locked``;
* **writes dialect-specific SQL**: a string holding ``pg_``, ``sqlite_``, ``PRAGMA``, ``FOR UPDATE``,
  ``SKIP LOCKED``, ``ON CONFLICT``, ``RETURNING``, ``LISTEN``/``NOTIFY`` (in capitals, as SQL is
  written here) or ``advisory``. Portable SQL used to arrange a test (``UPDATE instances SET
  state = ...``) does not count, nor prose ("a sink that cannot listen").

Tests that pin their database (an indirect ``database_url`` parameter, a module fixture
``database_url`` overriding the shared one, or ``postgres_url`` instead of ``db``) have chosen it
explicitly and are not checked. The mark may be put on more tests than the rule finds (a test of
dialect-specific behaviour the rule cannot see, e.g. NUL characters PostgreSQL refuses, or a
crash-recovery test); the rule only finds the ones that cannot go without it.

``pytest -p tests.dialect_rule --collect-only`` with ``CTRLPLANE_TEST_DIALECT_REPORT=<file>`` writes
the collected tests' findings as JSON; tests/unit/test_dialect_marks.py runs that and fails on any
test the rule says needs the mark and lacks it.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPORT_ENV = "CTRLPLANE_TEST_DIALECT_REPORT"

_NAMES = {
    "dialect": "branches on the SQL dialect",
    "asyncpg_dsn": "branches on the SQL dialect",
    "gather": "runs requests concurrently (locks, SKIP LOCKED, unique constraints)",
    "TaskGroup": "runs requests concurrently (locks, SKIP LOCKED, unique constraints)",
    "NotifyRelay": "LISTEN/NOTIFY across replicas",
    "LeaderElection": "advisory-lock leader election",
    "ROWS_CHANNEL": "the row cache's triggers and NOTIFY",
    "pg_notify": "LISTEN/NOTIFY across replicas",
    "migrate": "runs migrations",
    "downgrade": "runs migrations",
    "alembic": "runs migrations",
    "claim_next_operation": "claims queued operations (SKIP LOCKED)",
    "claim": "claims rows (idempotency or queue)",
    "with_for_update": "locks rows",
    "skip_locked": "locks rows (SKIP LOCKED)",
}


_SQL_WORDS = ("pg_", "sqlite_", "PRAGMA", "FOR UPDATE", "SKIP LOCKED", "ON CONFLICT", "RETURNING", "LISTEN", "NOTIFY")


def _referenced(node: ast.AST) -> Iterator[tuple[str, str]]:
    """(name, kind) of every name, attribute and SQL word in ``node``; kind is "name", "attr" or "sql"."""
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            # case-sensitive: SQL keywords are written in capitals here, and "cannot listen" is prose
            yield from ((word, "sql") for word in _SQL_WORDS if word in child.value)
            if "advisory" in child.value:
                yield "advisory", "sql"
        elif isinstance(child, ast.Name):
            yield child.id, "name"
        elif isinstance(child, ast.Attribute):
            yield child.attr, "attr"
        elif isinstance(child, ast.Import | ast.ImportFrom):
            for alias in child.names:
                yield alias.name.split(".")[0], "name"
            if isinstance(child, ast.ImportFrom) and child.module:
                yield child.module.split(".")[0], "name"


def reasons(function: ast.FunctionDef | ast.AsyncFunctionDef, module: ast.Module) -> list[str]:
    """Why the test ``function`` of ``module`` depends on the dialect (empty: it need not be marked)."""
    helpers = {node.name: node for node in module.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    for node in module.body:
        if isinstance(node, ast.ClassDef):
            helpers.update(
                (f"{node.name}.{item.name}", item)
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    found: dict[str, str] = {}
    seen: set[str] = set()
    pending: list[ast.FunctionDef | ast.AsyncFunctionDef] = [function]
    while pending:
        current = pending.pop()
        requested = [arg.arg for arg in current.args.args + current.args.kwonlyargs]
        for name in requested:
            if name in helpers and name not in seen:
                seen.add(name)
                pending.append(helpers[name])
        for name, kind in _referenced(current):
            if name == "claim" and kind != "attr":
                continue  # a local variable called ``claim`` is not a claim
            if kind == "sql":
                found.setdefault(name, "dialect-specific SQL")
            elif name in _NAMES:
                found.setdefault(name, _NAMES[name])
            if kind != "attr" and name in helpers and name not in seen:
                seen.add(name)
                pending.append(helpers[name])
    return [f"{name}: {why}" for name, why in sorted(found.items())]


@cache
def _module(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text())


def _function_node(item: pytest.Function) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    function = inspect.unwrap(item.function)
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return None
    tree = ast.parse(source)
    node = tree.body[0]
    return node if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None


def finding(item: pytest.Item) -> dict[str, Any] | None:
    """What the rule says about one collected test (None: it does not use the shared database)."""
    if not isinstance(item, pytest.Function) or "database_url" not in item.fixturenames:
        return None
    definitions = item._fixtureinfo.name2fixturedefs.get("database_url", ())
    pinned = bool(definitions) and definitions[-1].func.__module__ != "tests.conftest"
    callspec = getattr(item, "callspec", None)
    marked = item.get_closest_marker("dialects") is not None
    if callspec is not None and "database_url" in callspec.params and not marked:
        pinned = True
    node = _function_node(item)
    found = reasons(node, _module(str(item.path))) if node is not None else []
    database = callspec.params.get("database_url") if callspec is not None else None
    return {"nodeid": item.nodeid, "marked": marked, "pinned": pinned, "database": database, "reasons": found}


def findings(items: list[pytest.Item]) -> list[dict[str, Any]]:
    """What the rule says about each of ``items`` that uses the shared database."""
    return [found for item in items if (found := finding(item)) is not None]


# Options that collect or keep fewer tests than the whole suite.
_NARROWING_OPTIONS = ("keyword", "markexpr", "deselect", "ignore", "ignore_glob", "lf", "stepwise", "sw_skip")


def collects_the_whole_suite(config: pytest.Config) -> bool:
    """Whether this session's items are every test of the suite (a plain ``pytest``, as ``make test``
    runs it, in each xdist worker too), so the rule can judge them without collecting again."""
    if any(getattr(config.option, option, None) for option in _NARROWING_OPTIONS):
        return False
    base = config.rootpath if config.args_source == pytest.Config.ArgsSource.TESTPATHS else config.invocation_params.dir
    suite = {config.rootpath, config.rootpath / "tests"}
    return bool(config.args) and all("::" not in arg and (base / arg).resolve() in suite for arg in config.args)


def pytest_collection_finish(session: pytest.Session) -> None:
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    Path(target).write_text(json.dumps(findings(session.items)))
