"""Whether a Docker container's OOM flag may still change (``oom_settle_seconds``), and the Docker
provider reading a SIGKILLed container again until Docker has handled containerd's OOM event or
a moment has passed (``oom_settled``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from ctrlplane_docker.observe import OOM_SETTLE_SECONDS, oom_settle_seconds
from ctrlplane_docker.provider import oom_settled
from docker.errors import NotFound  # type: ignore[import-untyped, unused-ignore]

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def container(
    *, status: str = "exited", exit_code: int = 137, oom: bool = False, ago: float = 0.25, now: datetime = NOW
) -> dict[str, Any]:
    finished = (now - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    return {"Id": "c1", "State": {"Status": status, "ExitCode": exit_code, "OOMKilled": oom, "FinishedAt": finished}}


def test_a_sigkill_just_now_without_the_flag_waits_out_the_rest_of_the_second() -> None:
    assert oom_settle_seconds(container(ago=0.25), NOW) == pytest.approx(OOM_SETTLE_SECONDS - 0.25, abs=1e-3)


def test_an_exit_on_a_clock_ahead_of_ours_waits_no_longer_than_the_bound() -> None:
    assert oom_settle_seconds(container(ago=-300), NOW) == OOM_SETTLE_SECONDS


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
    assert oom_settle_seconds(attrs, NOW) == 0.0


class Engine:
    """An ``APIClient`` stand-in whose inspects return ``answers`` in turn (the last one again)."""

    def __init__(self, *answers: dict[str, Any] | Exception) -> None:
        self.answers = list(answers)
        self.inspects = 0

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        self.inspects += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_flag_that_comes_a_moment_later_is_read() -> None:
    now = datetime.now(UTC)
    engine = Engine(container(now=now), container(now=now, oom=True))
    settled = oom_settled(engine, container(now=now))  # type: ignore[arg-type]
    assert settled["State"]["OOMKilled"] is True
    assert engine.inspects == 2


def test_a_sigkill_that_was_no_oom_is_read_again_for_at_most_the_bound() -> None:
    now = datetime.now(UTC)
    engine = Engine(container(now=now, ago=-300))  # the engine's clock five minutes ahead
    started = time.monotonic()
    settled = oom_settled(engine, container(now=now, ago=-300))  # type: ignore[arg-type]
    # bounded by the second (generously, for a loaded machine); unbounded it would run 300 s
    assert time.monotonic() - started < OOM_SETTLE_SECONDS + 4
    assert settled["State"]["OOMKilled"] is False and engine.inspects >= 2


def test_a_container_removed_meanwhile_keeps_what_was_read() -> None:
    now = datetime.now(UTC)
    first = container(now=now)
    engine = Engine(NotFound("gone", response=SimpleNamespace(status_code=404)))
    assert oom_settled(engine, first) is first  # type: ignore[arg-type]
    assert engine.inspects == 1
