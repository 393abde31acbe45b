"""Schemathesis against the live OpenAPI document of a server with a fake provider.

Every phase the installed Schemathesis offers runs (examples, coverage, fuzzing, and stateful:
sequences of calls that feed one response's ids into the next request, inferred by Schemathesis
from the schema's parameters and ``Location`` headers), with every default check, once with a
tenant token and once with a system-admin token; then a stateful run as one tenant with the other
tenant as a peer (``object_level_authorization``). A server error (500), a response that does
not match the document, or a read of one tenant's object by the other fails the test.

Cross-tenant access is **guaranteed** elsewhere, not here: Schemathesis' peer probes happen only
for the reads of A's objects its budget reaches. tests/api/test_authz_matrix.py probes every
route of the OpenAPI document deterministically: ``test_another_tenants_objects_are_not_found``
sends tenant B's admin token and admin API key at every tenant route with a path parameter,
filled with tenant A's real objects (one of each kind, made by its ``world`` fixture), and
expects 404 ``not_found`` with the error shape and an unchanged database;
``test_another_tenants_objects_named_in_a_body_are_not_found`` does the same for objects named in
a body; ``test_matrix_covers_every_route_in_the_openapi_document`` fails for a route without an
entry, and ``World.url`` for a path parameter it cannot fill.

``make test`` runs a bounded pass (``CTRLPLANE_TEST_FUZZ_EXAMPLES``, default 5 examples per
operation, within ``CTRLPLANE_TEST_FUZZ_SECONDS``, default 15, per caller: the tenant's
on SQLite and PostgreSQL, the admin's on SQLite); ``make fuzz`` a long one. The
Schemathesis configuration (what 400s are right for schema-valid data) is tests/schemathesis.toml;
NUL characters are not generated because the API refuses them everywhere by design (web/unit_of_work.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import Api, bearer

EXAMPLES = os.environ.get("CTRLPLANE_TEST_FUZZ_EXAMPLES", "5")
SECONDS = float(os.environ.get("CTRLPLANE_TEST_FUZZ_SECONDS", "15"))
LONG = SECONDS > 60
ADMIN_DATABASES = ["sqlite", "postgres"] if LONG else ["sqlite"]
SEED = os.environ.get("CTRLPLANE_TEST_FUZZ_SEED")
SCHEMATHESIS = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).resolve().parent.parent / "schemathesis.toml"


async def schemathesis(
    base_url: str, token: str | None, report: Path, phases: str, seconds: float, config: Path = CONFIG
) -> tuple[int, str]:
    """``token``: every request's bearer token; None when the configuration names the credentials."""
    report.mkdir(parents=True, exist_ok=True)
    arguments = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{base_url}/schema/openapi.json",
        *(["--header", f"Authorization: Bearer {token}"] if token is not None else []),
        "--max-examples",
        EXAMPLES,
        "--phases",
        phases,
        "--max-time",
        str(max(1, round(seconds))),
        "--workers",
        "1",
        "--no-color",
        "--suppress-health-check",
        "too_slow,filter_too_much",
        "--generation-database",
        "none",
        "--generation-allow-x00",
        "false",
        "--report",
        "ndjson",
        "--report-dir",
        str(report),
        *(["--seed", SEED] if SEED else []),
    ]
    process = await asyncio.create_subprocess_exec(
        *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=report
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=seconds * 4 + 120)
    text = output.decode(errors="replace")
    (report / f"{phases.replace(',', '-')}.txt").write_text(text)
    return process.returncode or 0, text


async def _run(live: Api, live_server: str, caller: str, tmp_path: Path) -> None:
    """Examples, coverage and fuzzing share 60 % of the budget, the stateful phase has the rest to itself:
    in one run a loaded machine could spend it all before the stateful phase begins."""
    tenant = await live.create_tenant("fuzz", plan="enterprise")
    token = live.tokens.admin() if caller == "admin" else live.tokens.tenant(tenant["id"])
    for phases, share, must_run in (("examples,coverage,fuzzing", 0.6, "Coverage"), ("stateful", 0.4, "Stateful")):
        code, output = await schemathesis(live_server, token, tmp_path / "report", phases, SECONDS * share)
        assert code == 0, f"full output in {tmp_path / 'report'}\n" + output[-20000:]
        assert f"✅ {must_run}" in output, f"the {must_run} phase did not run:\n{output[-5000:]}"


# Slow by design: Schemathesis' budget of generated requests (--max-examples, --max-time in _run).
@pytest.mark.dialects("hostile values (NUL, huge integers) each dialect refuses differently")
async def test_schemathesis_as_a_tenant_finds_no_server_error_and_no_schema_violation(
    live: Api, live_server: str, tmp_path: Path
) -> None:
    await _run(live, live_server, "tenant", tmp_path)


# Slow by design: Schemathesis' budget of generated requests (--max-examples, --max-time in _run).
@pytest.mark.parametrize("database_url", ADMIN_DATABASES, indirect=True)
async def test_schemathesis_as_a_system_admin_finds_no_server_error_and_no_schema_violation(
    live: Api, live_server: str, tmp_path: Path
) -> None:
    await _run(live, live_server, "admin", tmp_path)


# Slow by design: Schemathesis' budget of generated requests (--max-examples, --max-time in _run).
@pytest.mark.dialects("hostile values (NUL, huge integers) each dialect refuses differently")
async def test_schemathesis_stateful_with_both_tenants_finds_no_server_error_schema_violation_or_cross_tenant_read(
    live: Api, live_server: str, tmp_path: Path
) -> None:
    """The stateful phase as tenant A (creating, then reading, changing and deleting what it made),
    with tenant B's credentials as a peer: Schemathesis replays A's successful reads of its own
    objects as B (``object_level_authorization``), which must not get them; beside every default
    check. The two tenants' credentials reach Schemathesis as a Web Fuzzing Commons document. B's
    probes happen only for reads of A's objects the phase makes within its budget: seeded objects
    make that likely, not certain, so the test does not require one. The deterministic probe of
    every route is test_authz_matrix.py's ``test_another_tenants_objects_are_not_found``."""
    peers = {}
    for name in ("tenant-a", "tenant-b"):
        tenant = await live.create_tenant(f"fuzz-{name.removeprefix('tenant-')}", plan="enterprise")
        peers[name] = live.tokens.tenant(tenant["id"])
    # objects of tenant A from the start, so the stateful phase reads some early and B's probes run
    owner = bearer(peers["tenant-a"])
    for path, body in (
        ("/v1/instances", {"name": "seeded", "image": "ctrlplane-test/busybox:1"}),
        ("/v1/webhooks", {"url": "https://hooks.example.invalid/seeded"}),
        ("/v1/log-drains", {"url": "https://logs.example.invalid/seeded"}),
    ):
        seeded = await live.client.post(path, json=body, headers=owner)
        assert seeded.status_code == 201, seeded.text
    credentials = tmp_path / "wfc-auth.json"
    credentials.write_text(
        json.dumps(
            {
                "auth": [
                    {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}
                    for name, token in peers.items()
                ]
            }
        )
    )
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        CONFIG.read_text()
        + f'\n[auth.wfc]\npath = "{credentials}"\nuser = "tenant-a"\npeers = ["tenant-a", "tenant-b"]\n'
    )
    code, output = await schemathesis(live_server, None, tmp_path / "report", "stateful", SECONDS, config=config)
    assert code == 0, f"full output in {tmp_path / 'report'}\n" + output[-20000:]
    assert "✅ Stateful" in output, f"the Stateful phase did not run:\n{output[-5000:]}"
