"""Cron schedules in a time zone, on ``croniter`` (a maintained library, not a parser of our own).

Five fields (minute hour day month weekday) as cron has them; with ``CTRLPLANE_JOB_ALLOW_SECONDS``
a sixth, leading *seconds* field is accepted too (``*/2 * * * * *``: every two seconds), which tests
use so a period lasts seconds rather than minutes. Firings are computed in the job's time zone (a
daily ``0 3 * * *`` in ``Europe/Paris`` fires at 03:00 Paris time across DST changes) and stored in
UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped, unused-ignore]

from ctrlplane.errors import InvalidInput

MAX_FIRINGS = 1000
"""At most this many past firings are enumerated at once (a long downtime of a per-second job)."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"unknown time zone {name!r}", details={"timezone": name}) from exc


def _expression(schedule: str) -> tuple[str, bool]:
    """croniter puts an optional seconds field last; ours leads, as in most schedulers that have one."""
    fields = schedule.split()
    if len(fields) == 6:
        return " ".join([*fields[1:], fields[0]]), True
    return " ".join(fields), False


def validate(schedule: str, timezone: str, *, allow_seconds: bool) -> None:
    """400 for an expression croniter rejects, a seconds field when not allowed, or an unknown zone."""
    zone(timezone)
    expression, has_seconds = _expression(schedule)
    fields = len(schedule.split())
    if fields not in (5, 6) or (has_seconds and not allow_seconds):
        allowed = "five fields (minute hour day month weekday)" + (
            " or six with a leading seconds field" if allow_seconds else ""
        )
        raise InvalidInput(f"schedule must have {allowed}", details={"schedule": schedule})
    if not croniter.is_valid(expression):
        raise InvalidInput(f"schedule {schedule!r} is not a valid cron expression", details={"schedule": schedule})


def next_after(schedule: str, timezone: str, after: datetime) -> datetime:
    """The first firing strictly after ``after``, in UTC."""
    expression, _ = _expression(schedule)
    local = after.astimezone(zone(timezone))
    found: datetime = croniter(expression, local).get_next(datetime)
    return found.astimezone(UTC)


def due(schedule: str, timezone: str, after: datetime, until: datetime) -> list[datetime]:
    """The firings in (after, until], oldest first, at most ``MAX_FIRINGS`` (the newest ones)."""
    expression, _ = _expression(schedule)
    iterator = croniter(expression, after.astimezone(zone(timezone)))
    firings: list[datetime] = []
    while True:
        moment: datetime = iterator.get_next(datetime)
        if moment > until:
            return firings
        firings.append(moment.astimezone(UTC))
        if len(firings) > MAX_FIRINGS:
            firings.pop(0)
