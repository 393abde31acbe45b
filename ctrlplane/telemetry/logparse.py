"""Reading a level out of a log line: structured first (JSON, then logfmt), else by keyword.

Levels are normalised to ``trace < debug < info < warn < error < fatal``. A JSON object line names
its level in ``level``, ``lvl``, ``severity``, ``levelname`` or ``log.level`` (a name, or a pino/bunyan
number: 10 trace … 60 fatal) and its message in ``msg``, ``message`` or ``event``; a logfmt line
(``key=value`` pairs, values optionally quoted) must have a ``level`` or ``lvl`` pair. Any other
line gets the level of the first keyword it contains (``ERROR``, ``Exception``, ``WARN``, ``FATAL``,
``panic:`` …), and ``info`` when it has none.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

Level = Literal["trace", "debug", "info", "warn", "error", "fatal"]
LEVELS: tuple[Level, ...] = ("trace", "debug", "info", "warn", "error", "fatal")
SEVERITY: dict[str, int] = {level: rank for rank, level in enumerate(LEVELS)}

_NAMES: dict[str, Level] = {
    "trace": "trace",
    "debug": "debug",
    "dbg": "debug",
    "info": "info",
    "information": "info",
    "notice": "info",
    "inf": "info",
    "warn": "warn",
    "warning": "warn",
    "wrn": "warn",
    "error": "error",
    "err": "error",
    "eror": "error",
    "fatal": "fatal",
    "critical": "fatal",
    "crit": "fatal",
    "panic": "fatal",
    "emerg": "fatal",
    "emergency": "fatal",
    "alert": "fatal",
}
_LEVEL_KEYS = ("level", "lvl", "severity", "levelname", "log.level", "loglevel")
_MESSAGE_KEYS = ("msg", "message", "event")
_LOGFMT_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.\-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
_KEYWORDS: tuple[tuple[re.Pattern[str], Level], ...] = (
    (re.compile(r"\b(?:FATAL|CRITICAL|CRIT|PANIC|EMERG)\b|\bpanic:|\bFatal\b"), "fatal"),
    (
        re.compile(r"\b(?:ERROR|ERR|SEVERE)\b|\b[Ee]rror\b|\bTraceback\b|\b[A-Za-z]*Exception\b|\bFAILED\b"),
        "error",
    ),
    (re.compile(r"\b(?:WARN|WARNING)\b|\b[Ww]arn(?:ing)?\b"), "warn"),
    (re.compile(r"\bDEBUG\b"), "debug"),
    (re.compile(r"\bTRACE\b"), "trace"),
)


def normalise(value: Any) -> Level | None:
    """A level from a name (any case) or a pino/bunyan/syslog-like number; None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = int(value)
        if number >= 60:
            return "fatal"
        if number >= 50:
            return "error"
        if number >= 40:
            return "warn"
        if number >= 30:
            return "info"
        return "debug" if number >= 20 else "trace"
    if isinstance(value, str):
        return _NAMES.get(value.strip().lower())
    return None


def _from_json(line: str) -> tuple[Level, str] | None:
    if not line.startswith("{"):
        return None
    try:
        document = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    if not isinstance(document, dict):
        return None
    level: Level | None = None
    for key in _LEVEL_KEYS:
        if key in document and (level := normalise(document[key])) is not None:
            break
    if level is None and isinstance(document.get("log"), dict):
        level = normalise(document["log"].get("level"))
    message = next((str(document[key]) for key in _MESSAGE_KEYS if isinstance(document.get(key), str)), None)
    if level is None:
        level = keyword_level(message) if message is not None else "info"
    return level, message if message is not None else line


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _from_logfmt(line: str) -> tuple[Level, str] | None:
    pairs = {key.lower(): _unquote(value) for key, value in _LOGFMT_PAIR.findall(line)}
    raw = pairs.get("level", pairs.get("lvl"))
    if raw is None or (level := normalise(raw)) is None:
        return None
    message = pairs.get("msg", pairs.get("message"))
    return level, message if message is not None else line


def keyword_level(line: str) -> Level:
    for pattern, level in _KEYWORDS:
        if pattern.search(line):
            return level
    return "info"


def parse(line: str) -> tuple[Level, str]:
    """The line's level and its message (a structured line's message field, else the whole line)."""
    text = line.strip()
    return _from_json(text) or _from_logfmt(text) or (keyword_level(text), line)


def at_least(level: Level, minimum: Level) -> bool:
    return SEVERITY[level] >= SEVERITY[minimum]
