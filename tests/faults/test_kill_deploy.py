"""SIGKILL at seeded random points during deploys (rolling, recreate, blue/green) of one small
instance, mixed with creates and deletes (see tests/faults/kill.py). Seeds are fixed; each run
prints ``seed=… run=… action=… kill_after=…``. One seed x SQLite and PostgreSQL x ``RUNS`` kills.
"""

from __future__ import annotations

import pytest

from ctrlplane.db import Database
from ctrlplane.settings import Settings
from tests.conftest import Tokens
from tests.faults.kill import run_kills
from tests.harness import ServeProcess

pytestmark = [
    pytest.mark.docker,
    pytest.mark.faults,
    pytest.mark.dialects("crash recovery: a killed server's transaction, locks and leases; flock or advisory lock"),
]

RUNS = 4


# Slow by design: RUNS server lifetimes killed mid deploy, then convergence on the real engine.
@pytest.mark.parametrize("seed", [2017])
async def test_killed_during_deploy_everything_converges(
    server: ServeProcess, db: Database, tokens: Tokens, settings: Settings, seed: int
) -> None:
    await run_kills(
        server=server, db=db, tokens=tokens, settings=settings, seed=seed, runs=RUNS,
        actions=("deploy", "deploy", "deploy", "create", "delete"),
    )  # fmt: skip
