"""``background.IdlePoller``: a commit sends one idle loop of a pool to claim, a claim hands the
look on to one more, and a backlog still reaches every loop (the loops here are shaped like
``Background.worker_loop``, over an in-memory list of work instead of the operation queue)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from ctrlplane.background import IdlePoller
from ctrlplane.signals import Signal

INTEREST = frozenset({"operations"})
LOOPS = 4
POLL_SECONDS = 30.0
"""Longer than any test: every look below comes from a wake-up or a hand-over, never a timer."""


@dataclass
class Pool:
    poller: IdlePoller
    work: list[str] = field(default_factory=list)
    looks: int = 0
    busy: int = 0
    most_busy: int = 0
    done: list[str] = field(default_factory=list)
    seconds_per_item: float = 0.05

    async def loop(self, number: int) -> None:
        signal = self.poller.signal
        while True:
            armed = signal.armed(INTEREST)
            self.looks += 1
            if self.work:
                item = self.work.pop(0)
                self.poller.found(number)
                self.busy += 1
                self.most_busy = max(self.most_busy, self.busy)
                await asyncio.sleep(self.seconds_per_item)
                self.busy -= 1
                self.done.append(item)
                continue
            await self.poller.wait(number, armed)


async def settled(pool: Pool, items: int) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(pool.done) == items and pool.busy == 0:
            await asyncio.sleep(0.05)  # any look a hand-over still causes
            return
    raise AssertionError(f"{len(pool.done)} of {items} done")


async def test_a_commit_sends_one_loop_to_claim_and_one_more_to_look() -> None:
    pool = Pool(IdlePoller(Signal(), INTEREST, POLL_SECONDS))
    tasks = [asyncio.create_task(pool.loop(n)) for n in range(LOOPS)]
    try:
        await asyncio.sleep(0.05)
        assert pool.looks == LOOPS  # each looked once at its start, then waits
        pool.work.append("op_1")
        pool.poller.signal.wake({"operations", "instances"})
        await settled(pool, 1)
        # the poller claimed it (1 look), the spare it handed on to found nothing (1 look), and the
        # poller looked again once its operation was done (1 look); the other two never woke
        assert pool.done == ["op_1"]
        assert pool.looks - LOOPS == 3
        looks = pool.looks
        pool.poller.signal.wake({"routes"})  # a commit that queued no operation wakes nobody
        await asyncio.sleep(0.05)
        assert pool.looks == looks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_backlog_is_taken_by_every_loop_at_once() -> None:
    pool = Pool(IdlePoller(Signal(), INTEREST, POLL_SECONDS))
    tasks = [asyncio.create_task(pool.loop(n)) for n in range(LOOPS)]
    try:
        await asyncio.sleep(0.05)
        pool.work.extend(f"op_{n}" for n in range(10))
        pool.poller.signal.wake(INTEREST)
        await settled(pool, 10)
        assert pool.most_busy == LOOPS
        assert sorted(pool.done) == sorted(f"op_{n}" for n in range(10))
        # afterwards one loop polls again: the next commit sends one to claim and one to look
        looks = pool.looks
        pool.work.append("op_late")
        pool.poller.signal.wake(INTEREST)
        await settled(pool, 11)
        assert pool.looks - looks == 3
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_wake_up_while_the_poller_looks_is_not_lost() -> None:
    signal = Signal()
    poller = IdlePoller(signal, INTEREST, POLL_SECONDS)
    armed = signal.armed(INTEREST)  # taken before looking, as the loops do
    signal.wake(INTEREST)  # the commit lands while it looks and finds nothing yet
    await asyncio.wait_for(poller.wait(0, armed), 1)  # returns at once instead of sleeping 30 s


async def test_only_the_poller_woken_by_a_commit_is_told_the_work_was_announced() -> None:
    """The worker loop claims without its look-first read only after ``wait`` says a commit
    announced work to it: not after a poll's timeout, nor for a spare handed the look by a claim
    (a spare's look is speculative: most hand-overs find nothing)."""
    signal = Signal()
    poller = IdlePoller(signal, INTEREST, 0.05)
    assert await poller.wait(0, signal.armed(INTEREST)) is False  # loop 0 polls; its time came
    armed = signal.armed(INTEREST)
    waiting = asyncio.create_task(poller.wait(0, armed))
    spare = asyncio.create_task(poller.wait(1, armed))
    await asyncio.sleep(0.01)
    signal.wake(INTEREST)
    assert await asyncio.wait_for(waiting, 1) is True
    poller.found(0)  # loop 0 claimed: spare 1 is handed the look
    assert await asyncio.wait_for(spare, 1) is False


async def test_a_worker_whose_record_found_nothing_looks_again_when_a_commit_came_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Background.worker_loop`` itself: on PostgreSQL an enqueue that does not lock the instance's
    row can commit after a record's own look at the queue and before its commit, and that record
    announces nothing; the worker that recorded looks once more when a commit came since the record
    began, though another loop is the poller (which looked too early and waits)."""
    from ctrlplane import background
    from ctrlplane.operations import queue

    work = Signal()
    looks: list[bool] = []
    runs = iter(["ran", "found nothing"])

    class Worker:
        def __init__(self, services: object) -> None:
            pass

        async def run_once(self, *, claimed: Any, recording: Any, look_first: bool) -> bool:
            if next(runs, "found nothing") == "ran":
                claimed()
                recording()
                work.wake(queue.READS)  # the unlocked enqueue's commit, during the record
                return False  # the record's look found nothing claimable
            looks.append(look_first)
            return False

    monkeypatch.setattr(background, "OperationWorker", Worker)
    services = SimpleNamespace(
        work=work, replica="r", db=SimpleNamespace(dialect="sqlite"), settings=SimpleNamespace(leader_lease_seconds=5)
    )
    loops = background.Background(services)  # type: ignore[arg-type]
    loops.operations._poller = 99  # another loop polls: this one would wait as a spare
    task = asyncio.create_task(loops.worker_loop(0))
    try:
        for _ in range(200):  # a spare would wait 10 s; this one looks at once
            if looks:
                break
            await asyncio.sleep(0.01)
        assert looks == [True]  # one more look, a read first
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
