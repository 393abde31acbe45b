"""SIGKILL at seeded random points while instances are created and deleted (see tests/faults/kill.py).

Seeds are fixed so a failure reproduces: each run prints ``seed=… run=… action=… kill_after=…``.
One seed x SQLite and PostgreSQL x ``RUNS`` kills.
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

RUNS = 6


# Slow by design: RUNS server lifetimes, each SIGKILLed and restarted, then convergence on the real engine.
@pytest.mark.parametrize("seed", [1009])
async def test_killed_during_create_and_delete_everything_converges(
    server: ServeProcess, db: Database, tokens: Tokens, settings: Settings, seed: int
) -> None:
    await run_kills(
        server=server, db=db, tokens=tokens, settings=settings, seed=seed, runs=RUNS, actions=("create", "delete")
    )
