"""Time: every timestamp is timezone-aware UTC and rendered RFC 3339; durations are Go-style strings."""

from __future__ import annotations

import re
from datetime import UTC, datetime

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""Input times outside these bounds are refused: windows, defaults and retention are computed by
adding to and subtracting from them, which near ``datetime``'s own limits would overflow (a 500)."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
MAX_DURATION_SECONDS = 100 * 365 * 86400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_utc(moment: datetime, field: str) -> datetime:
    """An input time in UTC; naive or unrepresentable times are the caller's mistake (400)."""
    from ctrlplane.errors import InvalidInput

    if moment.tzinfo is None:
        raise InvalidInput(f"{field} must be RFC 3339 with a timezone", details={field: "no timezone"})
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise InvalidInput(
            f"{field} is out of range: times from {EARLIEST.year} to {LATEST.year - 1} are accepted",
            details={field: "out of range"},
        )
    return utc


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"30s"``, ``"1m30s"``, ``"1h"``, ``"500ms"`` or ``"7d"``."""
    text = text.strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"{text[:64]!r} is not a duration like 30s, 1m30s, 1h or 7d")
    if not total <= MAX_DURATION_SECONDS:  # also false for inf and nan: "9" * 400 + "s" parses as inf
        raise ValueError(f"a duration is at most {MAX_DURATION_SECONDS // 86400:.0f}d")
    return total


def parse_duration_input(field: str, text: str) -> float:
    """``parse_duration`` for a request's field: text that is not a duration, or longer than the
    longest one, is the caller's mistake (400 naming the field), never a 500."""
    from ctrlplane.errors import InvalidInput

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}", details={field: text[:64]}) from None
