"""``signals.Signal``: a wake-up that names tables wakes only the waiters whose interest meets them."""

from __future__ import annotations

import asyncio

from ctrlplane.signals import Signal

OPERATIONS = frozenset({"operations"})
EVENTS = frozenset({"events", "event_streams"})


async def test_a_wake_up_naming_tables_wakes_only_the_waiters_reading_them() -> None:
    signal = Signal()
    operations, events, anything = signal.armed(OPERATIONS), signal.armed(EVENTS), signal.armed()
    signal.wake({"routes", "audit_log"})
    assert (operations.is_set(), events.is_set(), anything.is_set()) == (False, False, True)
    signal.wake({"event_streams"})
    assert (operations.is_set(), events.is_set()) == (False, True)
    signal.wake(set())  # a commit that wrote nothing a loop reads
    assert not operations.is_set()
    signal.wake()  # no tables named: it may have written anything
    assert operations.is_set()


async def test_armed_hands_one_event_per_interest_until_it_is_set() -> None:
    signal = Signal()
    first = signal.armed(OPERATIONS)
    assert signal.armed(OPERATIONS) is first
    signal.wake(OPERATIONS)
    assert first.is_set()
    assert signal.armed(OPERATIONS) is not first  # the next wake-up sets a new one


async def test_wait_returns_on_a_matching_wake_up_and_times_out_on_another() -> None:
    signal = Signal()
    woken = asyncio.create_task(signal.wait(30, interest=OPERATIONS))
    await asyncio.sleep(0)
    signal.wake({"routes"})
    await asyncio.sleep(0.05)
    assert not woken.done()
    signal.wake({"operations", "routes"})
    await asyncio.wait_for(woken, 5)
    started = asyncio.get_running_loop().time()
    await signal.wait(0.05, interest=OPERATIONS)  # nothing matches: the poll's timeout ends it
    assert asyncio.get_running_loop().time() - started >= 0.05


async def test_notify_hands_the_tables_to_the_relay() -> None:
    signal = Signal()
    published: list[object] = []
    signal.publish = published.append
    await signal.notify({"operations"})
    await signal.notify()
    assert published == [{"operations"}, None]
