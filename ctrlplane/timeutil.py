"""Time: every timestamp is timezone-aware UTC and rendered RFC 3339; durations are Go-style strings."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
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
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{field} is out of range", details={field: "out of range"}) from None


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
        raise ValueError(f"{text!r} is not a duration like 30s, 1m30s, 1h or 7d")
    return total
