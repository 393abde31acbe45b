"""The shared ``eventually`` helper: returns the first truthy answer, backs off, fails in time."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.waiting import LONGEST_POLL_SECONDS, eventually, eventually_sync


async def test_returns_the_first_truthy_answer_of_a_sync_or_async_check() -> None:
    answers = iter([None, 0, "found"])
    assert await eventually(lambda: next(answers)) == "found"

    calls: list[float] = []

    async def check() -> int | None:
        calls.append(time.monotonic())
        return len(calls) if len(calls) == 3 else None

    assert await eventually(check) == 3


async def test_polls_back_off_up_to_the_longest_interval() -> None:
    calls: list[float] = []

    def check() -> bool:
        calls.append(time.monotonic())
        return len(calls) == 8

    await eventually(check)
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert gaps[-1] > gaps[0] * 4  # 10 ms growing to the 250 ms cap
    assert max(gaps) < LONGEST_POLL_SECONDS + 0.2


async def test_fails_after_the_timeout_saying_what_and_the_last_answer() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"the instance: not true after 0.3 s \(last answer: \[\]\)"):
        await eventually(lambda: [], "the instance", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    with pytest.raises(AssertionError, match="last seen: 7"):
        await eventually(lambda: None, lambda: "last seen: 7", timeout=0.05)


def test_the_sync_twin_returns_the_first_truthy_answer_backs_off_and_fails_in_time() -> None:
    calls: list[float] = []

    def check() -> int | None:
        calls.append(time.monotonic())
        return len(calls) if len(calls) == 8 else None

    assert eventually_sync(check) == 8
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert gaps[-1] > gaps[0] * 4
    with pytest.raises(AssertionError, match=r"the process: not true after 0.05 s \(last answer: 0\)"):
        eventually_sync(lambda: 0, "the process", timeout=0.05)
