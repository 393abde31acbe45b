"""Whether a Docker container's OOM flag may still change (``oom_unsettled``): the provider reads a
SIGKILLed container again until Docker has handled containerd's OOM event or a moment has passed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ctrlplane_docker.observe import OOM_SETTLE_SECONDS, oom_unsettled

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def container(*, status: str = "exited", exit_code: int = 137, oom: bool = False, ago: float = 0.1) -> dict[str, Any]:
    finished = (NOW - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    return {"Id": "c1", "State": {"Status": status, "ExitCode": exit_code, "OOMKilled": oom, "FinishedAt": finished}}


def test_a_sigkill_just_now_without_the_flag_is_unsettled() -> None:
    assert oom_unsettled(container(), NOW)


@pytest.mark.parametrize(
    "attrs",
    [
        container(oom=True),  # the flag is there: settled
        container(exit_code=1),  # not a SIGKILL: the OOM killer sends SIGKILL only
        container(exit_code=143),  # SIGTERM
        container(status="running", exit_code=0),
        container(ago=OOM_SETTLE_SECONDS + 0.01),  # long enough ago: a SIGKILL from elsewhere
        {"Id": "c1", "State": {"Status": "exited", "ExitCode": 137, "FinishedAt": "0001-01-01T00:00:00Z"}},
        {"Id": "c1"},
    ],
    ids=["flagged", "exit-1", "sigterm", "running", "long-ago", "no-finish-time", "no-state"],
)
def test_everything_else_is_settled(attrs: dict[str, Any]) -> None:
    assert not oom_unsettled(attrs, NOW)
