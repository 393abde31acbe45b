"""The row cache's own rules (ctrlplane/rowcache.py): what it refuses to store, when an entry
stops being served, and when it serves nothing at all."""

from __future__ import annotations

from ctrlplane.rowcache import RowCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _live(ttl: float = 10.0) -> tuple[RowCache, Clock]:
    clock = Clock()
    cache = RowCache(clock=clock)
    cache.enable(ttl, needs_listener=False)
    return cache, clock


def test_an_entry_is_served_until_its_ttl_and_then_dropped() -> None:
    cache, clock = _live(ttl=10)
    cache.put("instances", "i1", cache.ticket(), "view")
    assert cache.get("instances", "i1") == "view"
    clock.now += 9.9
    assert cache.get("instances", "i1") == "view"
    clock.now += 0.2
    assert cache.get("instances", "i1") is None
    assert len(cache) == 0


def test_a_read_that_raced_a_write_does_not_store_the_older_row() -> None:
    cache, _ = _live()
    ticket = cache.ticket()  # the reader starts; its database read sees the old row
    cache.invalidate([("instances", "i1")])  # a write commits meanwhile
    cache.put("instances", "i1", ticket, "old row")
    assert cache.get("instances", "i1") is None
    # a read that started after the invalidation stores what it read
    cache.put("instances", "i1", cache.ticket(), "new row")
    assert cache.get("instances", "i1") == "new row"


def test_an_invalidation_of_one_row_leaves_the_others() -> None:
    cache, _ = _live()
    ticket = cache.ticket()
    cache.put("instances", "i1", ticket, "one")
    cache.put("tenants", "i1", ticket, "a tenant with the same id")
    cache.invalidate_payload("instances:i1")
    assert cache.get("instances", "i1") is None
    assert cache.get("tenants", "i1") == "a tenant with the same id"
    cache.put("instances", "i2", ticket, "a row nobody changed since the ticket")
    assert cache.get("instances", "i2") == "a row nobody changed since the ticket"


def test_clear_refuses_every_older_ticket() -> None:
    cache, _ = _live()
    before = cache.ticket()
    cache.put("instances", "i1", before, "one")
    cache.clear()
    assert cache.get("instances", "i1") is None
    cache.put("instances", "i2", before, "read before the clear")
    assert cache.get("instances", "i2") is None
    cache.put("instances", "i2", cache.ticket(), "read after it")
    assert cache.get("instances", "i2") == "read after it"


def test_too_many_remembered_invalidations_refuse_older_tickets_instead() -> None:
    cache, _ = _live()
    cache.MAX_INVALIDATIONS = 3
    ticket = cache.ticket()
    for n in range(4):
        cache.invalidate([("instances", f"other{n}")])
    cache.put("instances", "i1", ticket, "read before all of them")
    assert cache.get("instances", "i1") is None


def test_the_oldest_entry_makes_room_past_the_size_bound() -> None:
    cache, _ = _live()
    cache.MAX_ENTRIES = 2
    for n in range(3):
        cache.put("instances", f"i{n}", cache.ticket(), n)
    assert cache.get("instances", "i0") is None
    assert cache.get("instances", "i1") == 1
    assert cache.get("instances", "i2") == 2


def test_off_serves_and_stores_nothing() -> None:
    cache = RowCache()
    cache.put("instances", "i1", cache.ticket(), "view")
    assert cache.get("instances", "i1") is None
    cache.enable(0, needs_listener=False)  # CTRLPLANE_READ_CACHE_SECONDS=0
    cache.put("instances", "i1", cache.ticket(), "view")
    assert cache.get("instances", "i1") is None


def test_with_a_listener_it_serves_only_while_connected_and_starts_empty() -> None:
    cache = RowCache()
    cache.enable(10, needs_listener=True)
    cache.put("instances", "i1", cache.ticket(), "view")
    assert cache.get("instances", "i1") is None  # not listening yet: it could miss a change
    cache.connected(True)
    ticket = cache.ticket()
    cache.put("instances", "i1", ticket, "view")
    assert cache.get("instances", "i1") == "view"
    cache.connected(False)
    assert cache.get("instances", "i1") is None
    cache.connected(True)  # what was stored before the disconnect is gone for good
    assert cache.get("instances", "i1") is None
    cache.put("instances", "i1", ticket, "read while it was disconnected")
    assert cache.get("instances", "i1") is None
