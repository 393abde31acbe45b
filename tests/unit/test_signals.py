"""``signals.Signal``: a wake-up that names tables wakes only the waiters whose interest meets them;
``signals.Absence``: a read that found nothing is believed until such a wake-up or its time."""

from __future__ import annotations

import asyncio

from ctrlplane.signals import Absence, Signal

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


class Reads:
    """A read of whether something is there, counting its calls."""

    def __init__(self, found: bool = False) -> None:
        self.found, self.calls = found, 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.found


async def test_an_absence_is_believed_until_a_commit_writes_its_tables() -> None:
    signal = Signal()
    absence = Absence(signal, frozenset({"webhook_endpoints"}), seconds=60)
    read = Reads()
    assert await absence.present(read) is False
    assert await absence.present(read) is False
    assert read.calls == 1  # the second time nothing could have changed it: no read
    signal.wake({"events", "instances"})  # a commit that wrote other tables
    assert await absence.present(read) is False
    assert read.calls == 1
    read.found = True
    signal.wake({"webhook_endpoints"})  # an endpoint was created
    assert await absence.present(read) is True
    assert await absence.present(read) is True
    assert read.calls == 3  # something is there: every call reads again


async def test_an_absence_is_read_again_after_a_wake_up_naming_no_tables_or_its_time() -> None:
    signal = Signal()
    read = Reads()
    absence = Absence(signal, frozenset({"environments"}), seconds=60)
    await absence.present(read)
    signal.wake()  # it may have written anything
    await absence.present(read)
    assert read.calls == 2
    short = Absence(signal, frozenset({"environments"}), seconds=0.05)
    await short.present(read)
    await asyncio.sleep(0.1)  # a lost wake-up hides a change for at most this long
    await short.present(read)
    assert read.calls == 4


async def test_a_commit_during_the_read_is_not_lost() -> None:
    signal = Signal()
    absence = Absence(signal, frozenset({"templates"}), seconds=60)
    calls = 0

    async def read() -> bool:
        nonlocal calls
        calls += 1
        signal.wake({"templates"})  # a template is committed while the read runs, after it looked
        return False

    await absence.present(read)
    await absence.present(read)
    assert calls == 2
